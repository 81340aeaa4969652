//! Entities: the transaction (request id), the patient, the encounter, the query and the
//! data the interaction touched, and from them the interaction's target resource.

use super::resource::Entity;
use super::{missing, nonempty, BALP_ENTITY_TYPE, OBJECT_ROLE, RESOURCE_TYPES};
use crate::error::DecodeError;

/// The entities of one `AuditEvent`, each with its [`EntityKind`].
pub(super) struct Entities<'a> {
    all: &'a [Entity],
    kinds: Vec<EntityKind>,
}

/// The resource an interaction acted on.
pub(super) struct Target {
    /// The interaction, with `search` made `search-type` or `search-system`.
    pub(super) interaction: String,
    /// The resource type (`Resource`, `Bundle` or `CapabilityStatement` at system level).
    pub(super) resource_type: String,
    /// The resource id, for instance-level interactions that name one.
    pub(super) resource_id: Option<String>,
}

impl<'a> Entities<'a> {
    /// Classifies every entity once.
    pub(super) fn classify(all: &'a [Entity]) -> Self {
        Entities {
            all,
            kinds: all.iter().map(entity_kind).collect(),
        }
    }

    /// The entities of one kind, in document order.
    fn of_kind(&self, kind: EntityKind) -> impl Iterator<Item = &'a Entity> + '_ {
        self.all
            .iter()
            .zip(self.kinds.iter())
            .filter(move |(_, k)| **k == kind)
            .map(|(e, _)| e)
    }

    /// The BALP `XrequestId` entity's `what.identifier.value`.
    pub(super) fn request_id(&self) -> Option<String> {
        self.of_kind(EntityKind::Transaction)
            .find_map(|e| {
                e.what
                    .as_ref()
                    .and_then(|w| w.identifier.as_ref())
                    .and_then(|i| nonempty(i.value.as_deref()))
            })
            .map(str::to_owned)
    }

    /// `Patient/x` of the patient entity; for interactions other than searches and
    /// histories, else of any entity referencing a patient.
    pub(super) fn patient(&self, search_like: bool) -> Option<String> {
        self.of_kind(EntityKind::Patient)
            .find_map(|e| reference_of_type(e, "Patient"))
            .or_else(|| {
                if search_like {
                    None
                } else {
                    self.all
                        .iter()
                        .find_map(|e| reference_of_type(e, "Patient"))
                }
            })
    }

    /// `Encounter/x` of the first entity referencing an encounter.
    pub(super) fn encounter(&self) -> Option<String> {
        self.all
            .iter()
            .find_map(|e| reference_of_type(e, "Encounter"))
    }

    /// `(type, id)` of the primary data entity: the first with an explicit data role
    /// (`4` Domain Resource, `3`, `20`), else the first data entity.
    fn primary(&self) -> Option<(&'a str, Option<&'a str>)> {
        let explicit_data_role = |e: &Entity| {
            e.role.as_ref().is_some_and(|r| {
                r.has(OBJECT_ROLE, "4") || r.has(OBJECT_ROLE, "3") || r.has(OBJECT_ROLE, "20")
            })
        };
        self.of_kind(EntityKind::Data)
            .find(|e| explicit_data_role(e))
            .or_else(|| self.of_kind(EntityKind::Data).next())
            .and_then(entity_target)
    }

    /// `Type/id` of every data entity: what a search or history returned.
    pub(super) fn returned_ids(&self) -> Vec<String> {
        self.of_kind(EntityKind::Data)
            .filter_map(entity_target)
            .filter_map(|(t, id)| id.map(|id| format!("{t}/{id}")))
            .collect()
    }

    /// The target of `interaction`: a fixed type for system-level interactions, the
    /// searched type for searches, else the primary data entity or the patient.
    pub(super) fn target(
        &self,
        interaction: &str,
        patient: Option<&str>,
    ) -> Result<Target, DecodeError> {
        let system = |resource_type: &str| Target {
            interaction: interaction.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: None,
        };
        match interaction {
            "search-system" | "history-system" => Ok(system("Resource")),
            "capabilities" => Ok(system("CapabilityStatement")),
            "transaction" | "batch" => Ok(system("Bundle")),
            "search" | "search-type" | "history-type" => self.searched(interaction),
            _ => self.instance(interaction, patient),
        }
    }

    /// A search or type history: the type from the query entity, else from the data
    /// entities; a plain `search` becomes `search-type`, or `search-system` without one.
    fn searched(&self, interaction: &str) -> Result<Target, DecodeError> {
        let data_type = self.primary().map(|(t, _)| t.to_owned());
        let searched = self
            .of_kind(EntityKind::Query)
            .find_map(query_type)
            .or(data_type);
        let (interaction, resource_type) = match (searched, interaction) {
            (Some(t), "search") => ("search-type", t),
            (Some(t), other) => (other, t),
            (None, "search") => ("search-system", "Resource".to_owned()),
            (None, _) => return Err(missing("AuditEvent.entity(query)")),
        };
        Ok(Target {
            interaction: interaction.to_owned(),
            resource_type,
            resource_id: None,
        })
    }

    /// An instance-level interaction: the primary data entity, else the patient itself
    /// (not for `create`), else `Resource` for a bare `history`.
    fn instance(&self, interaction: &str, patient: Option<&str>) -> Result<Target, DecodeError> {
        let (resource_type, resource_id) = match self.primary() {
            Some((t, id)) => (t.to_owned(), id.map(str::to_owned)),
            None => match patient.and_then(|p| p.strip_prefix("Patient/")) {
                Some(pid) if interaction != "create" => {
                    ("Patient".to_owned(), Some(pid.to_owned()))
                }
                _ if interaction == "history" => ("Resource".to_owned(), None),
                _ => return Err(missing("AuditEvent.entity(data).what")),
            },
        };
        Ok(Target {
            interaction: interaction.to_owned(),
            resource_type,
            resource_id,
        })
    }
}

/// `{rtype}/{id}` when the entity's `what.reference` points at a resource of type `rtype`.
fn reference_of_type(e: &Entity, rtype: &str) -> Option<String> {
    e.what
        .as_ref()
        .and_then(|w| w.reference.as_deref())
        .and_then(split_reference)
        .filter(|(t, _)| *t == rtype)
        .map(|(_, id)| format!("{rtype}/{id}"))
}

/// What an entity is, for this mapping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntityKind {
    /// The BALP `XrequestId` entity.
    Transaction,
    /// The query (object role `24`).
    Query,
    /// The patient (object role `1`).
    Patient,
    /// Any other entity pointing at a resource.
    Data,
    /// Anything else.
    Other,
}

/// Classifies an entity by its type and role.
fn entity_kind(e: &Entity) -> EntityKind {
    let role = |code| e.role.as_ref().is_some_and(|r| r.has(OBJECT_ROLE, code));
    if e.ty
        .as_ref()
        .is_some_and(|t| t.has(BALP_ENTITY_TYPE, "XrequestId"))
    {
        EntityKind::Transaction
    } else if role("24") {
        EntityKind::Query
    } else if role("1") {
        EntityKind::Patient
    } else if entity_target(e).is_some() {
        EntityKind::Data
    } else {
        EntityKind::Other
    }
}

/// `(type, id)` an entity points at: from `what.reference`, else type only from `what.type`.
fn entity_target(e: &Entity) -> Option<(&str, Option<&str>)> {
    let what = e.what.as_ref()?;
    if let Some((t, id)) = what.reference.as_deref().and_then(split_reference) {
        return Some((t, Some(id)));
    }
    let t = what.ty.as_deref()?;
    let t = t.rsplit('/').next().unwrap_or(t);
    is_type_name(t).then_some((t, None))
}

/// Splits `Type/id`, `Type/id/_history/v` or an absolute URL ending so into type and id.
pub(super) fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let r = reference.split(['?', '#']).next().unwrap_or("");
    let r = match r.find("/_history") {
        Some(i) => &r[..i],
        None => r,
    };
    let mut parts = r.trim_end_matches('/').rsplit('/');
    let id = parts.next().filter(|id| !id.is_empty())?;
    let t = parts.next()?;
    is_type_name(t).then_some((t, id))
}

/// A FHIR resource type name: `PascalCase` ASCII letters (rejects `FHIR`, `r4`, hosts).
fn is_type_name(s: &str) -> bool {
    s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphabetic())
        && s.chars().any(|c| c.is_ascii_lowercase())
}

/// The resource type a query entity searched: a `resource-types` type code, else the last
/// resource-type path segment of the request line in `description` or `name`.
fn query_type(e: &Entity) -> Option<String> {
    let coded = e.ty.as_ref().and_then(|t| {
        t.codings()
            .find(|(s, c)| *s == Some(RESOURCE_TYPES) && is_type_name(c))
            .map(|(_, c)| c.to_owned())
    });
    coded
        .or_else(|| e.description.as_deref().and_then(type_from_request_line))
        .or_else(|| e.name.as_deref().and_then(type_from_request_line))
}

/// `GET https://host/r4/Observation?patient=x` or `POST /r4/Observation/_search HTTP/1.1`:
/// the last path segment that is a resource type name. Only the name is kept.
pub(super) fn type_from_request_line(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut tokens = line.split_ascii_whitespace();
    let first = tokens.next()?;
    let target = if first.chars().all(|c| c.is_ascii_uppercase()) {
        tokens.next()?
    } else {
        first
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    path.rsplit('/')
        .find(|s| is_type_name(s))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(split_reference("Patient/123"), Some(("Patient", "123")));
        assert_eq!(
            split_reference("https://fhir.example/r4/Observation/o-1/_history/3"),
            Some(("Observation", "o-1"))
        );
        assert_eq!(split_reference("#contained"), None);
        assert_eq!(split_reference("urn:uuid:1234"), None);
        assert_eq!(split_reference("Patient/"), None);
    }

    #[test]
    fn finds_the_searched_type() {
        let t = |s| type_from_request_line(s);
        assert_eq!(
            t("GET test.fhir.org/r4/Observation?patient=ex-patient&_count=10\nAccept: x"),
            Some("Observation".to_owned())
        );
        assert_eq!(
            t("POST /r4/Observation/_search HTTP/1.1\nHost: test.fhir.org"),
            Some("Observation".to_owned())
        );
        assert_eq!(t("GET Patient/123/Condition"), Some("Condition".to_owned()));
        assert_eq!(t("GET https://x.example/FHIR?_type=Observation"), None);
    }
}
