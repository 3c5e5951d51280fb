//! Benchmarks behind `humanline bench`: figures are printed and written under bench/results/.
//! The command line (`cli::bench`) only parses arguments; the measuring is here.

pub mod callbacks;
pub mod speech;
pub mod verifier;

use crate::escape::normalize;
use anyhow::Context;
use serde_json::json;
use std::path::Path;

pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * (v.len() - 1) as f64).round() as usize;
    v.get(rank).copied()
}

/// n, median, p95 and max of `values`.
pub fn summary(values: &[f64]) -> serde_json::Value {
    json!({"n": values.len(), "median": percentile(values, 50.0), "p95": percentile(values, 95.0),
        "max": values.iter().copied().reduce(f64::max)})
}

/// Word error rate of a hypothesis against a reference, on normalised words.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalize::words(reference);
    let h = normalize::words(hypothesis);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

/// A transcript with at least this many times the reference's words (plus one) has written
/// the sentence twice: the live decode's defect on real voices (issue 10, item 3, "Press 0 for
/// help. Press 0 to help.").
const WRITTEN_TWICE: f64 = 1.5;

/// Whether `heard` looks like `reference` written twice (see [`WRITTEN_TWICE`]).
pub fn written_twice(reference: &str, heard: &str) -> bool {
    let (r, h) = (
        normalize::words(reference).len(),
        normalize::words(heard).len(),
    );
    r > 0 && h as f64 >= WRITTEN_TWICE * r as f64 + 1.0
}

/// The machine's load averages (/proc/loadavg), recorded with every result: other work
/// shares the cores.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Writes `value` as pretty JSON, creating the folder.
pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}
