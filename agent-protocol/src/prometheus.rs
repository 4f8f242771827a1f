//! Prometheus' text exposition format (version 0.0.4), as the coordinator's and the build
//! host daemon's `GET /metrics` write it.
//!
//! Why our own few functions and not the `prometheus` or `prometheus-client` crates: both
//! metrics endpoints serve a dozen families whose values are read at scrape time (from the
//! database, from the daemon's own state) or kept as plain atomics; a registry, its macros and
//! its dependencies would be most of the code. What the format asks of a writer is small and
//! is all here: `# HELP` and `# TYPE` before a family's samples, label values with `\`, `"`
//! and line feeds escaped, `HELP` text with `\` and line feeds escaped, and for a histogram
//! cumulative `_bucket` samples ending at `le="+Inf"`, then `_sum` and `_count`. The tests of
//! both endpoints read what they serve with an independent parser (Debian's
//! `python3-prometheus-client`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The label set of a metric without labels.
pub const NONE: [(&str, &str); 0] = [];

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: its `HELP` and `TYPE` lines, then a sample per label set.
pub fn family<'a, L: AsRef<[(&'a str, &'a str)]>>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(L, u64)],
) {
    header(out, name, kind, help);
    for (labels, value) in samples {
        sample(out, name, labels.as_ref(), None, *value);
    }
}

/// `# HELP` and `# TYPE` of a family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line: `name{labels,extra} value`.
fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    let mut all = labels.iter().copied().chain(extra).peekable();
    if all.peek().is_some() {
        out.push('{');
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format writes it: backslash, double quote and line feed escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `HELP` text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Counts of jobs by their `result.json` status, mapped onto a fixed label set: the four
/// statuses of [`JobStatus`](crate::JobStatus) and `other` for anything else, so a runner (or
/// a result it did not write) cannot grow the label set.
#[derive(Debug, Default)]
pub struct StatusCounts([AtomicU64; 5]);

/// The label values of [`StatusCounts`], in order.
const STATUS_LABELS: [&str; 5] = [
    crate::JobStatus::Succeeded.as_str(),
    crate::JobStatus::Failed.as_str(),
    crate::JobStatus::Refused.as_str(),
    crate::JobStatus::RunnerError.as_str(),
    "other",
];

impl StatusCounts {
    /// Counts one job whose status is `status` (`None`: not text, counted as `other`).
    pub fn count(&self, status: Option<&str>) {
        let i = status
            .and_then(|s| STATUS_LABELS[..4].iter().position(|k| *k == s))
            .unwrap_or(4);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// One sample per status, labelled `status`.
    pub fn samples(&self) -> Vec<([(&'static str, &'static str); 1], u64)> {
        STATUS_LABELS
            .iter()
            .zip(&self.0)
            .map(|(s, n)| ([("status", *s)], n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A histogram of durations with fixed bucket bounds (seconds), counted with atomics: one
/// observation is a few relaxed additions, and a scrape reads it without a lock (a scrape
/// racing an observation may see the count and the sum from either side of it, which
/// Prometheus tolerates: each series is monotonic on its own).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Observations at or below each bound (not cumulative; summed when written).
    counts: Vec<AtomicU64>,
    /// Observations above the last bound.
    over: AtomicU64,
    /// The sum of every observation, in milliseconds.
    sum_ms: AtomicU64,
}

impl Histogram {
    /// Empty, with `bounds` in seconds, ascending.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            over: AtomicU64::new(0),
            sum_ms: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `d`.
    pub fn observe(&self, d: std::time::Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // `le` is inclusive: 60.000 s is in the 60 s bucket, 60.001 s is not.
        let slot = self
            .bounds
            .iter()
            .position(|b| ms <= b.saturating_mul(1000));
        match slot {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Writes the family: cumulative buckets, `+Inf`, the sum in seconds, the count.
    pub fn write(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut total = 0u64;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            total += count.load(Ordering::Relaxed);
            sample(out, &bucket, &[], Some(("le", &bound.to_string())), total);
        }
        total += self.over.load(Ordering::Relaxed);
        sample(out, &bucket, &[], Some(("le", "+Inf")), total);
        let ms = self.sum_ms.load(Ordering::Relaxed);
        sample(
            out,
            &format!("{name}_sum"),
            &[],
            None,
            format_args!("{}.{:03}", ms / 1000, ms % 1000),
        );
        sample(out, &format!("{name}_count"), &[], None, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_text_format_has_help_type_and_escaped_labels() {
        let mut out = String::new();
        family(
            &mut out,
            "x_total",
            "counter",
            "A \\ help\nline.",
            &[
                (&NONE[..], 1),
                (&[("a", "q\"b\\s\nn"), ("b", "plain")][..], 2),
            ],
        );
        assert_eq!(
            out,
            "# HELP x_total A \\\\ help\\nline.\n# TYPE x_total counter\nx_total 1\n\
             x_total{a=\"q\\\"b\\\\s\\nn\",b=\"plain\"} 2\n"
        );
    }

    #[test]
    fn statuses_outside_the_four_are_counted_as_other() {
        let c = StatusCounts::default();
        for s in [
            Some("succeeded"),
            Some("runner-error"),
            Some("weird\nstatus"),
            Some("Succeeded"),
            None,
        ] {
            c.count(s);
        }
        let got: Vec<(&str, u64)> = c.samples().iter().map(|(l, n)| (l[0].1, *n)).collect();
        assert_eq!(
            got,
            [
                ("succeeded", 1),
                ("failed", 0),
                ("refused", 0),
                ("runner-error", 1),
                ("other", 3)
            ]
        );
    }

    #[test]
    fn a_histogram_writes_cumulative_buckets_with_inclusive_bounds_then_sum_and_count() {
        static BOUNDS: [u64; 3] = [1, 10, 60];
        let h = Histogram::new(&BOUNDS);
        for ms in [0, 1_000, 1_001, 9_500, 60_000, 60_001, 4_000_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.write(&mut out, "job_seconds", "How long.");
        assert_eq!(
            out,
            "# HELP job_seconds How long.\n# TYPE job_seconds histogram\n\
             job_seconds_bucket{le=\"1\"} 2\n\
             job_seconds_bucket{le=\"10\"} 4\n\
             job_seconds_bucket{le=\"60\"} 5\n\
             job_seconds_bucket{le=\"+Inf\"} 7\n\
             job_seconds_sum 4131.502\n\
             job_seconds_count 7\n"
        );
        let empty = Histogram::new(&BOUNDS);
        let mut out = String::new();
        empty.write(&mut out, "e", "E.");
        assert!(
            out.contains("e_bucket{le=\"+Inf\"} 0\ne_sum 0.000\ne_count 0\n"),
            "{out}"
        );
    }
}
