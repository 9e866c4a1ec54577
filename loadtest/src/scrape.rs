//! Stage times out of Prometheus text: the workers' `tributary_worker_stage_seconds` (seconds
//! summed per stage, and the `task` stage's buckets for latency quantiles) and the coordinator's
//! `tributary_load_seconds` (the `load` stage). The same parser reads this process's registries
//! (embedded runs, encoded as text) and the `/metrics` pages of worker and coordinator processes.

use std::collections::BTreeMap;

const STAGE: &str = "tributary_worker_stage_seconds";
const LOAD: &str = "tributary_load_seconds";

/// Seconds per stage summed over every page given, and the task stage's cumulative buckets.
#[derive(Debug, Default, Clone)]
pub struct Stages {
    pub seconds: BTreeMap<String, f64>,
    /// (upper bound, cumulative count), summed over pipelines and pages.
    task_buckets: BTreeMap<u64, (f64, u64)>,
}

/// A sample's metric name, labels and value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// One sample line (`None` for comments and junk).
fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect();
    Some((name, labels, value))
}

fn label<'a>(labels: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

impl Stages {
    /// Adds one metrics page.
    pub fn add_text(&mut self, text: &str) {
        for (name, labels, value) in text.lines().filter_map(sample) {
            if name == format!("{STAGE}_sum") {
                let stage = label(&labels, "stage").unwrap_or("?");
                *self.seconds.entry(stage.to_string()).or_insert(0.0) += value;
            } else if name == format!("{LOAD}_sum") {
                *self.seconds.entry("load".into()).or_insert(0.0) += value;
            } else if name == format!("{STAGE}_bucket") && label(&labels, "stage") == Some("task") {
                let le = match label(&labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                let b = self.task_buckets.entry(le.to_bits()).or_insert((le, 0));
                b.1 += value as u64;
            }
        }
    }

    /// Adds this process's registries (an embedded run).
    pub fn add_registry(&mut self, registry: &prometheus::Registry) {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        if prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .is_ok()
        {
            self.add_text(&String::from_utf8_lossy(&buf));
        }
    }

    /// Task latency at quantile `q`: the upper bound of the bucket it falls in (0 if no task).
    pub fn task_latency(&self, q: f64) -> f64 {
        let mut buckets: Vec<(f64, u64)> = self.task_buckets.values().copied().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last().map_or(0, |b| b.1);
        let want = ((total as f64 * q).ceil() as u64).max(1);
        buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map_or(0.0, |(le, _)| *le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: &str = r#"# HELP tributary_worker_stage_seconds Durations.
# TYPE tributary_worker_stage_seconds histogram
tributary_worker_stage_seconds_bucket{pipeline="a",stage="task",le="0.5"} 1
tributary_worker_stage_seconds_bucket{pipeline="a",stage="task",le="1"} 8
tributary_worker_stage_seconds_bucket{pipeline="a",stage="task",le="5"} 10
tributary_worker_stage_seconds_bucket{pipeline="a",stage="task",le="+Inf"} 10
tributary_worker_stage_seconds_sum{pipeline="a",stage="task"} 7.5
tributary_worker_stage_seconds_count{pipeline="a",stage="task"} 10
tributary_worker_stage_seconds_sum{pipeline="a",stage="read"} 2.25
tributary_worker_stage_seconds_bucket{pipeline="a",stage="read",le="0.5"} 10
"#;

    #[test]
    fn stage_sums_and_task_quantiles_add_up_over_pages() {
        let mut s = Stages::default();
        s.add_text(WORKER);
        s.add_text(WORKER);
        s.add_text("tributary_load_seconds_sum{table=\"t\"} 3\ntributary_load_seconds_count{table=\"t\"} 2\n");
        assert_eq!(s.seconds["task"], 15.0);
        assert_eq!(s.seconds["read"], 4.5);
        assert_eq!(s.seconds["load"], 3.0);
        // 20 tasks: 2 ≤ 0.5 s, 16 ≤ 1 s, 20 ≤ 5 s.
        assert_eq!(s.task_latency(0.05), 0.5);
        assert_eq!(s.task_latency(0.5), 1.0);
        assert_eq!(s.task_latency(0.95), 5.0);
        assert_eq!(Stages::default().task_latency(0.5), 0.0);
    }

    #[test]
    fn comments_and_junk_lines_are_skipped() {
        let mut s = Stages::default();
        s.add_text("# TYPE x counter\nnot a sample\ntributary_worker_stage_seconds_sum{stage=\"write\"} nan?\n");
        assert!(s.seconds.is_empty());
    }
}
