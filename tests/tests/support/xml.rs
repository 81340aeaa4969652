//! A minimal XML reader for the ClickHouse users files (elements, attributes, text,
//! comments), and the accounts and grants such a file declares.

use std::collections::BTreeMap;

/// An element: name, attributes, child elements and text.
#[derive(Debug, Default)]
pub struct Xml {
    /// Element name.
    pub name: String,
    /// Attributes.
    pub attrs: BTreeMap<String, String>,
    /// Child elements.
    pub children: Vec<Xml>,
    /// Text content.
    pub text: String,
}

impl Xml {
    /// Parses a document; returns its root element.
    pub fn parse(src: &str) -> Xml {
        let mut p = XmlReader { s: src, i: 0 };
        p.skip_misc();
        p.element()
    }

    /// The first child element named `name`.
    pub fn child(&self, name: &str) -> Option<&Xml> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child element named `name`.
    pub fn all(&self, name: &str) -> impl Iterator<Item = &Xml> {
        let name = name.to_owned();
        self.children.iter().filter(move |c| c.name == name)
    }
}

struct XmlReader<'a> {
    s: &'a str,
    i: usize,
}

impl XmlReader<'_> {
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }

    fn skip_to(&mut self, end: &str) {
        let at = self.rest().find(end).expect("unterminated XML construct");
        self.i += at + end.len();
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.i = self.s.len() - trimmed.len();
    }

    fn skip_misc(&mut self) {
        loop {
            self.skip_ws();
            if self.rest().starts_with("<?") {
                self.skip_to("?>");
            } else if self.rest().starts_with("<!--") {
                self.skip_to("-->");
            } else {
                return;
            }
        }
    }

    fn name(&mut self) -> String {
        let n: String = self
            .rest()
            .chars()
            .take_while(|c| !c.is_whitespace() && !"/>=".contains(*c))
            .collect();
        self.i += n.len();
        n
    }

    fn element(&mut self) -> Xml {
        assert!(self.rest().starts_with('<'), "XML: expected an element");
        self.i += 1;
        let mut el = Xml {
            name: self.name(),
            ..Xml::default()
        };
        loop {
            self.skip_ws();
            if self.rest().starts_with("/>") {
                self.i += 2;
                return el;
            }
            if self.rest().starts_with('>') {
                self.i += 1;
                break;
            }
            let key = self.name();
            self.skip_ws();
            assert!(self.rest().starts_with('='), "XML: attribute without value");
            self.i += 1;
            self.skip_ws();
            let quote = self.rest().chars().next().expect("quote");
            self.i += 1;
            let end = self.rest().find(quote).expect("closing quote");
            el.attrs.insert(key, unescape(&self.rest()[..end]));
            self.i += end + 1;
        }
        loop {
            if self.rest().starts_with("<!--") {
                self.skip_to("-->");
            } else if self.rest().starts_with("</") {
                self.skip_to(">");
                el.text = unescape(el.text.trim());
                return el;
            } else if self.rest().starts_with('<') {
                let child = self.element();
                el.children.push(child);
            } else {
                let end = self.rest().find('<').expect("XML: unclosed element");
                el.text.push_str(&self.rest()[..end]);
                self.i += end;
            }
        }
    }
}

pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// users -> grant queries, for every user that is not removed.
pub fn users_and_grants(users_xml: &str) -> BTreeMap<String, Vec<String>> {
    let root = Xml::parse(users_xml);
    let users = root.child("users").expect("<users>");
    users
        .children
        .iter()
        .filter(|u| !u.attrs.contains_key("remove"))
        .map(|u| {
            let grants = u
                .child("grants")
                .map(|g| g.all("query").map(|q| q.text.clone()).collect())
                .unwrap_or_default();
            (u.name.clone(), grants)
        })
        .collect()
}
