//! The run engine both modes share: a pure state machine of a run and of its load batches
//! ([`machine`]), and the types its state is written in. `coordinator run` ([`crate::run`]) and
//! `coordinator serve` ([`crate::fleet`]) drive it with their own backends (the embedded queue
//! and in-process workers; SQS, S3 and a SQL warehouse), so a rule about when a batch closes, when
//! a run is judged or how it ends is written once, here, and unit-tested without I/O.

pub mod machine;

use protocol::Counts;
use serde::{Deserialize, Serialize};

pub use machine::{Action, Applied, Event, RunMachine};

/// Where a run is. Written in `run.json` as its lowercase name (`"completed"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the run has ended (nothing more of it is enqueued or loaded).
    pub fn is_final(self) -> bool {
        self != RunStatus::Running
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finished shard, as recorded in state (`runs/RUN/done/SHARD`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneRecord {
    pub manifest_key: String,
    pub counts: Counts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_statuses_are_written_as_the_names_earlier_versions_wrote() {
        for (s, text) in [
            (RunStatus::Running, "running"),
            (RunStatus::Completed, "completed"),
            (RunStatus::Failed, "failed"),
            (RunStatus::Cancelled, "cancelled"),
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{text}\""));
            assert_eq!(s.to_string(), text);
            assert_eq!(
                serde_json::from_str::<RunStatus>(&format!("\"{text}\"")).unwrap(),
                s
            );
        }
        assert!(!RunStatus::Running.is_final() && RunStatus::Cancelled.is_final());
    }
}
