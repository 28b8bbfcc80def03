//! The state file beside the audit log (`audit.jsonl.state`): `running` while an agent writes
//! the log, `stopped` with the last `seq` after a clean stop. Finding `running` (or no state
//! beside a non-empty log) at start means the previous agent died without flushing, so the
//! records of its last flush window may be missing: the new agent says so in a `loss` record.
//!
//! Both states also carry `kernel_lost`, the kernel's lost-event counter as far as `loss`
//! records already reported it: the counter lives in pinned maps that outlive the agent, and
//! the next agent reports only what was lost since.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::Path,
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
enum State {
    Running {
        #[serde(default)]
        kernel_lost: u64,
    },
    Stopped {
        seq: u64,
        #[serde(default)]
        kernel_lost: u64,
    },
}

/// What the previous agent left behind, as far as the log can tell.
#[derive(Debug, PartialEq, Eq)]
pub enum PreviousStop {
    /// A new log, or a clean stop whose last record is in the log.
    Accounted,
    /// Records may be missing: `lost` is how many are known lost (0 when the count is unknown).
    Unaccounted { lost: u64, reason: String },
}

/// Judges the previous stop from the state file, the log's last `seq` and whether the log
/// ends in a torn line; also returns the kernel loss count already reported.
pub fn previous_stop(
    state_path: &Path,
    last_seq: u64,
    torn: bool,
) -> io::Result<(PreviousStop, u64)> {
    let state = match fs::read(state_path) {
        Ok(bytes) => serde_json::from_slice::<State>(&bytes).ok(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let kernel_lost = match state {
        Some(State::Running { kernel_lost } | State::Stopped { kernel_lost, .. }) => kernel_lost,
        None => 0,
    };
    Ok((judge(state, last_seq, torn), kernel_lost))
}

fn judge(state: Option<State>, last_seq: u64, torn: bool) -> PreviousStop {
    if state.is_none() && last_seq == 0 && !torn {
        return PreviousStop::Accounted;
    }
    let torn_lost = u64::from(torn);
    match state {
        Some(State::Stopped { seq, .. }) if seq == last_seq && !torn => PreviousStop::Accounted,
        Some(State::Stopped { seq, .. }) if seq > last_seq => PreviousStop::Unaccounted {
            lost: seq - last_seq + torn_lost,
            reason: format!(
                "the log ends at seq {last_seq} but the previous agent stopped after seq {seq}"
            ),
        },
        Some(State::Stopped { .. }) => PreviousStop::Unaccounted {
            lost: torn_lost,
            reason: "the log changed after the previous agent stopped".into(),
        },
        Some(State::Running { .. }) | None => PreviousStop::Unaccounted {
            lost: torn_lost,
            reason: "the previous agent did not stop cleanly: records of up to its last second \
                     may be missing (count unknown)"
                .into(),
        },
    }
}

/// Marks the log as being written (before the first record, and whenever `kernel_lost`
/// grows).
pub fn mark_running(state_path: &Path, kernel_lost: u64) -> io::Result<()> {
    write(state_path, &State::Running { kernel_lost })
}

/// Marks a clean stop after `seq`, the last record written and flushed.
pub fn mark_stopped(state_path: &Path, seq: u64, kernel_lost: u64) -> io::Result<()> {
    write(state_path, &State::Stopped { seq, kernel_lost })
}

/// Writes the state durably: a temporary file, synced, renamed over the old one.
fn write(state_path: &Path, state: &State) -> io::Result<()> {
    let mut tmp = state_path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut file = File::create(&tmp)?;
    serde_json::to_writer(&mut file, state).map_err(io::Error::other)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&tmp, state_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clean_stop_at_the_last_record_is_accounted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl.state");
        let judge = |last, torn| previous_stop(&path, last, torn).expect("judge").0;
        assert_eq!(judge(0, false), PreviousStop::Accounted, "a new log");
        assert!(matches!(
            judge(5, false),
            PreviousStop::Unaccounted { lost: 0, .. }
        ));
        mark_running(&path, 0).expect("running");
        assert!(matches!(
            judge(0, false),
            PreviousStop::Unaccounted { lost: 0, .. }
        ));
        assert!(matches!(
            judge(7, true),
            PreviousStop::Unaccounted { lost: 1, .. }
        ));
        mark_stopped(&path, 7, 40).expect("stopped");
        assert_eq!(judge(7, false), PreviousStop::Accounted);
        assert_eq!(previous_stop(&path, 7, false).expect("judge").1, 40);
        assert!(matches!(
            judge(4, false),
            PreviousStop::Unaccounted { lost: 3, .. }
        ));
        assert!(matches!(
            judge(9, false),
            PreviousStop::Unaccounted { lost: 0, .. }
        ));
        assert!(!dir.path().join("audit.jsonl.state.tmp").exists());
        // A state file from before `kernel_lost` existed still reads.
        fs::write(&path, r#"{"state":"stopped","seq":9}"#).expect("old state");
        assert_eq!(
            previous_stop(&path, 9, false).expect("judge"),
            (PreviousStop::Accounted, 0)
        );
    }
}
