//! Prometheus text-format metrics kept in atomics: commands by outcome, append and search latency
//! histograms, HTTP responses by status. The projector's lag and parked failures are read from the
//! database at scrape time, so they are right even when the projector runs in another process.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use crate::event_store::{AppendPaths, CommandTimings, Histogram};
use crate::projector::ProjectorStats;

#[derive(Default)]
pub struct Metrics {
    commands: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    responses: Mutex<BTreeMap<u16, u64>>,
    pub append_latency: Histogram,
    pub search_latency: Histogram,
    pub query_embed_latency: Histogram,
    /// The projector's token count and when it was last read, for a tokens/s rate between scrapes.
    token_sample: Mutex<Option<(Instant, u64)>>,
}

impl Metrics {
    /// Counts a command (`add`, `update`, `remove`) by outcome (`appended`, `unchanged`, or an error code).
    pub fn command(&self, command: &'static str, outcome: &'static str) {
        *self
            .commands
            .lock()
            .expect("metrics lock")
            .entry((command, outcome))
            .or_default() += 1;
    }

    pub fn response(&self, status: u16) {
        *self.responses.lock().expect("metrics lock").entry(status).or_default() += 1;
    }

    /// The text exposition; `projector` is the in-process projector's counters when there is one.
    /// `yielded`: model batches the projector ran on a core fewer because requests were arriving.
    pub fn render(&self, projector: Option<&ProjectorStats>, yielded: u64) -> String {
        let mut out = String::new();
        out.push_str("# HELP recall_commands_total Document commands by command and outcome.\n");
        out.push_str("# TYPE recall_commands_total counter\n");
        for ((command, outcome), n) in self.commands.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "recall_commands_total{{command=\"{command}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP recall_http_responses_total HTTP responses by status code.\n");
        out.push_str("# TYPE recall_http_responses_total counter\n");
        for (status, n) in self.responses.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "recall_http_responses_total{{status=\"{status}\"}} {n}");
        }
        for (name, help, histogram) in [
            (
                "recall_command_seconds",
                "Time to decide and append a command (until its event is committed).",
                &self.append_latency,
            ),
            (
                "recall_search_seconds",
                "Search requests end to end: query embedding and index search.",
                &self.search_latency,
            ),
            (
                "recall_query_embedding_seconds",
                "Embedding one query on the query path.",
                &self.query_embed_latency,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            histogram.render(&mut out, name, "");
        }
        if let Some(stats) = projector {
            let tokens = stats.tokens.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = {
                let mut sample = self.token_sample.lock().expect("metrics lock");
                let rate = match *sample {
                    Some((at, before)) if now > at => tokens.saturating_sub(before) as f64 / (now - at).as_secs_f64(),
                    _ => 0.0,
                };
                *sample = Some((now, tokens));
                rate
            };
            for (name, kind, help, value) in [
                (
                    "recall_projector_events_total",
                    "counter",
                    "Events this process's projector has applied.",
                    stats.events.load(Ordering::Relaxed) as f64,
                ),
                (
                    "recall_projector_tokens_total",
                    "counter",
                    "Word pieces this process's projector has embedded.",
                    tokens as f64,
                ),
                (
                    "recall_projector_tokens_per_second",
                    "gauge",
                    "Embedding throughput of the projector since the previous scrape.",
                    rate,
                ),
                (
                    "recall_projector_yielded_batches_total",
                    "counter",
                    "Model batches the projector ran on a core fewer, leaving it to arriving requests.",
                    yielded as f64,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
            }
        }
        out
    }
}

/// Commands' time by stage (see `event_store::CommandTimings`): where a slow tail waited.
pub fn render_command_stages(timings: &CommandTimings) -> String {
    let name = "recall_command_stage_seconds";
    let mut out = format!(
        "# HELP {name} A command's time by stage: read (its stream), queue (for the group-commit writer), \
         connect (a connection for the append), statement (the append; with its flush on the fast path), commit \
         (the locked path's flush).\n# TYPE {name} histogram\n"
    );
    for (stage, histogram) in timings.stages() {
        histogram.render(&mut out, name, &format!("stage=\"{stage}\""));
    }
    out
}

/// The event store's appends by path: `fast` in one round trip, `slow` through the locked read (a
/// first append, a version conflict, or another process appending to the same log).
pub fn render_append_paths(paths: &AppendPaths) -> String {
    let mut out = String::from(
        "# HELP recall_appends_total Event-log appends by path (fast: one round trip; slow: read under the lock).\n\
         # TYPE recall_appends_total counter\n",
    );
    for (path, n) in [("fast", &paths.fast), ("slow", &paths.slow)] {
        let _ = writeln!(
            out,
            "recall_appends_total{{path=\"{path}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn commands_are_counted_by_outcome() {
        let m = Metrics::default();
        m.command("add", "appended");
        m.command("add", "appended");
        m.command("update", "version_conflict");
        let out = m.render(None, 0);
        assert!(out.contains("recall_commands_total{command=\"add\",outcome=\"appended\"} 2\n"));
        assert!(out.contains("recall_commands_total{command=\"update\",outcome=\"version_conflict\"} 1\n"));
    }
}
