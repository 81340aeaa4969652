//! Server-rendered SVG charts: accesses over time as stacked bars, one colour per series (a
//! user or a role), with the same numbers as a table beside it (the text alternative). Pure
//! functions: bucketing, the axis maximum and the scaling are tested without a page.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, DurationRound, Utc};
use maud::{html, Markup};

/// Most series drawn; the rest are summed as "other".
pub const MAX_SERIES: usize = 5;
/// Colours of the series (distinguishable, each with >= 3:1 contrast against white, as
/// WCAG 1.4.11 asks of graphical objects), then "other" in grey. The legend's swatches use
/// the same colours through the classes `s0`..`s5` of the stylesheet (the CSP allows no
/// inline style).
pub const PALETTE: [&str; MAX_SERIES + 1] = [
    "#1f5fa8", "#b35900", "#2e7d32", "#8e24aa", "#c62828", "#616161",
];

/// The width of a time bucket for a span: hour, day, week or 30 days, so that the chart has
/// at most about 48 bars.
pub fn bucket_width(span: Duration) -> Duration {
    let candidates = [
        Duration::hours(1),
        Duration::days(1),
        Duration::weeks(1),
        Duration::days(30),
    ];
    for c in candidates {
        if span.num_seconds() / c.num_seconds().max(1) <= 48 {
            return c;
        }
    }
    Duration::days(365)
}

/// The axis maximum: the smallest of 1, 2, 5 x 10^k not below `max` (at least 1).
pub fn nice_ceiling(max: u64) -> u64 {
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            let v = base.saturating_mul(m);
            if v >= max || v == u64::MAX {
                return v;
            }
        }
        base = base.saturating_mul(10);
    }
}

/// The pixel height of `value` on an axis from 0 to `axis_max` drawn `height` pixels high.
pub fn scale(value: u64, axis_max: u64, height: f64) -> f64 {
    if axis_max == 0 {
        return 0.0;
    }
    (value as f64 / axis_max as f64 * height).clamp(0.0, height)
}

/// Counts per time bucket and series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Bucket starts, ascending.
    pub buckets: Vec<DateTime<Utc>>,
    /// Bucket width.
    pub width: Duration,
    /// Series names, largest first; the last is "other" when more than [`MAX_SERIES`] were
    /// found.
    pub names: Vec<String>,
    /// `counts[series][bucket]`.
    pub counts: Vec<Vec<u64>>,
}

impl Series {
    /// Buckets `(time, key)` points; the largest [`MAX_SERIES`] keys are kept and the rest
    /// summed under "other".
    pub fn build(points: &[(DateTime<Utc>, String)]) -> Series {
        let (Some(min), Some(max)) = (
            points.iter().map(|p| p.0).min(),
            points.iter().map(|p| p.0).max(),
        ) else {
            return Series {
                buckets: Vec::new(),
                width: Duration::hours(1),
                names: Vec::new(),
                counts: Vec::new(),
            };
        };
        let width = bucket_width(max - min);
        let start = min.duration_trunc(width).unwrap_or(min);
        let n = ((max - start).num_seconds() / width.num_seconds().max(1)) as usize + 1;
        let buckets: Vec<DateTime<Utc>> = (0..n).map(|i| start + width * i as i32).collect();
        let mut totals: HashMap<&str, u64> = HashMap::new();
        for (_, k) in points {
            *totals.entry(k.as_str()).or_default() += 1;
        }
        let mut ranked: Vec<(&str, u64)> = totals.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut names: Vec<String> = ranked
            .iter()
            .take(MAX_SERIES)
            .map(|(k, _)| (*k).to_owned())
            .collect();
        let other = ranked.len() > MAX_SERIES;
        if other {
            names.push("other".to_owned());
        }
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .take(MAX_SERIES)
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        let mut counts = vec![vec![0u64; n]; names.len()];
        for (t, k) in points {
            let b = ((*t - start).num_seconds() / width.num_seconds().max(1)) as usize;
            let s = index.get(k.as_str()).copied().unwrap_or(MAX_SERIES);
            if let Some(row) = counts.get_mut(s) {
                if let Some(c) = row.get_mut(b.min(n - 1)) {
                    *c += 1;
                }
            }
        }
        Series {
            buckets,
            width,
            names,
            counts,
        }
    }

    /// The largest stacked bar.
    pub fn max_total(&self) -> u64 {
        (0..self.buckets.len())
            .map(|b| self.counts.iter().map(|s| s[b]).sum::<u64>())
            .max()
            .unwrap_or(0)
    }

    fn label(&self, t: &DateTime<Utc>) -> String {
        if self.width < Duration::days(1) {
            t.format("%Y-%m-%dT%H:00Z").to_string()
        } else {
            t.format("%Y-%m-%d").to_string()
        }
    }
}

/// The chart and its table: `title` names what is counted, `by` the series ("user", "role").
pub fn render(id: &str, title: &str, by: &str, s: &Series) -> Markup {
    if s.buckets.is_empty() {
        return html! { p { "No accesses to chart." } };
    }
    let (w, h, left, bottom, top) = (720.0_f64, 240.0_f64, 48.0_f64, 36.0_f64, 10.0_f64);
    let plot_h = h - bottom - top;
    let axis = nice_ceiling(s.max_total());
    let slot = (w - left - 8.0) / s.buckets.len() as f64;
    let bar = (slot * 0.8).clamp(1.0, 40.0);
    let label_every = (s.buckets.len() / 6).max(1);
    let caption = format!("{title} by {by}, per {}", width_name(s.width));
    html! {
        figure class="chart" aria-labelledby=(format!("{id}-cap")) {
            figcaption id=(format!("{id}-cap")) { (caption) " (UTC)" }
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {w} {h}")) role="img"
                aria-label=(format!("{caption}; the table below gives the numbers")) {
                line x1=(left) y1=(top) x2=(left) y2=(top + plot_h) stroke="#333" {}
                line x1=(left) y1=(top + plot_h) x2=(w - 4.0) y2=(top + plot_h) stroke="#333" {}
                text x=(left - 6.0) y=(top + 4.0) text-anchor="end" font-size="11" { (axis) }
                text x=(left - 6.0) y=(top + plot_h) text-anchor="end" font-size="11" { "0" }
                @for (b, t) in s.buckets.iter().enumerate() {
                    @let x = left + 4.0 + slot * b as f64;
                    @for (si, v, y, bh) in stack(s, b, axis, top + plot_h, plot_h) {
                        rect x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(format!("{bar:.1}"))
                            height=(format!("{bh:.1}")) fill=(PALETTE[si.min(MAX_SERIES)]) {
                            title { (s.label(t)) ": " (s.names[si]) " " (v) }
                        }
                    }
                    @if b % label_every == 0 {
                        text x=(format!("{x:.1}")) y=(h - bottom + 14.0) font-size="10" { (s.label(t)) }
                    }
                }
            }
            ul class="legend" {
                @for (si, name) in s.names.iter().enumerate() {
                    li { span class=(format!("swatch s{}", si.min(MAX_SERIES))) {} (name) }
                }
            }
            details {
                summary { "The chart's numbers as a table" }
                table {
                    caption { (caption) }
                    thead { tr {
                        th scope="col" { "Period start (UTC)" }
                        @for name in &s.names { th scope="col" { (name) } }
                    } }
                    tbody {
                        @for (b, t) in s.buckets.iter().enumerate() {
                            tr {
                                th scope="row" { (s.label(t)) }
                                @for counts in &s.counts { td class="num" { (counts[b]) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The stacked segments of bucket `b`: (series, count, top y, height), bottom first.
fn stack(s: &Series, b: usize, axis: u64, base: f64, plot_h: f64) -> Vec<(usize, u64, f64, f64)> {
    let mut y = base;
    let mut out = Vec::new();
    for (si, counts) in s.counts.iter().enumerate() {
        let v = counts[b];
        if v > 0 {
            let bh = scale(v, axis, plot_h);
            y -= bh;
            out.push((si, v, y, bh));
        }
    }
    out
}

fn width_name(d: Duration) -> &'static str {
    match d.num_hours() {
        1 => "hour",
        24 => "day",
        168 => "week",
        720 => "30 days",
        _ => "year",
    }
}

/// The `n` keys with most points, most first (ties by name).
pub fn top(keys: impl Iterator<Item = String>, n: usize) -> Vec<(String, u64)> {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for k in keys {
        *totals.entry(k).or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = totals.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("time")
            + Duration::hours(h)
    }

    #[test]
    fn axis_maximum_is_a_round_number() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(999), 1000);
        assert_eq!(nice_ceiling(1001), 2000);
    }

    #[test]
    fn scaling_is_proportional_and_clamped() {
        assert_eq!(scale(5, 10, 200.0), 100.0);
        assert_eq!(scale(0, 10, 200.0), 0.0);
        assert_eq!(scale(20, 10, 200.0), 200.0);
        assert_eq!(scale(3, 0, 200.0), 0.0);
    }

    #[test]
    fn bucket_width_follows_the_span() {
        assert_eq!(bucket_width(Duration::hours(10)), Duration::hours(1));
        assert_eq!(bucket_width(Duration::days(10)), Duration::days(1));
        assert_eq!(bucket_width(Duration::days(200)), Duration::weeks(1));
        assert_eq!(bucket_width(Duration::days(1000)), Duration::days(30));
        assert_eq!(bucket_width(Duration::days(5000)), Duration::days(365));
    }

    #[test]
    fn points_are_bucketed_with_other_for_small_series() {
        let mut points = vec![
            (t(0), "a".to_owned()),
            (t(0), "a".to_owned()),
            (t(2), "b".to_owned()),
        ];
        for (i, k) in ["c", "d", "e", "f", "g"].iter().enumerate() {
            points.push((t(i as i64), (*k).to_owned()));
        }
        let s = Series::build(&points);
        assert_eq!(s.width, Duration::hours(1));
        assert_eq!(s.buckets.len(), 5);
        assert_eq!(s.names.len(), MAX_SERIES + 1);
        assert_eq!(s.names[0], "a");
        assert_eq!(s.names.last().map(String::as_str), Some("other"));
        let total: u64 = s.counts.iter().flatten().sum();
        assert_eq!(total, points.len() as u64);
        assert_eq!(s.counts[0][0], 2);
        assert_eq!(s.max_total(), 3);
    }

    #[test]
    fn labels_are_escaped_in_the_svg() {
        let s = Series::build(&[(t(0), "<script>x</script>".to_owned())]);
        let out = render("c", "Accesses", "user", &s).into_string();
        assert!(!out.contains("<script>"));
        assert!(out.contains("&lt;script&gt;"));
    }

    #[test]
    fn legend_classes_have_the_palette_colours() {
        for (i, colour) in PALETTE.iter().enumerate() {
            let rule = format!(".s{i} {{ background: {colour}; }}");
            assert!(crate::html::CSS.contains(&rule), "{rule}");
        }
    }

    #[test]
    fn top_list_orders_by_count() {
        let keys = ["b", "a", "b", "c", "b", "a"].iter().map(|s| s.to_string());
        assert_eq!(top(keys, 2), vec![("b".to_owned(), 3), ("a".to_owned(), 2)]);
    }
}
