//! Where records go: a JSON Lines file (or stdout), rotated by size, with `seq` resumed from
//! the log's last record so that it stays contiguous across restarts and rotations.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Serialize;

use super::{
    clock::rfc3339,
    files::{LogFiles, is_torn, read_tail},
    record::{ConnectionRecord, LossRecord, PolicyRecord},
    state::{self, PreviousStop},
};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("opening audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the audit log: {0}")]
    Write(#[source] io::Error),
    #[error("encoding an audit record: {0}")]
    Encode(#[source] serde_json::Error),
}

/// When the current file is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a record would make the current file larger than this; 0: never.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` … `audit.jsonl.keep`); at least 1.
    pub keep: usize,
}

impl Rotation {
    pub const NEVER: Self = Self {
        max_bytes: 0,
        keep: 1,
    };
}

const BUFFER_BYTES: usize = 1 << 16;

enum Target {
    Stdout,
    File {
        files: LogFiles,
        rotation: Rotation,
        /// Bytes in the current file, including those still buffered.
        size: u64,
        /// The current file, for `fsync` at a clean stop.
        sync: File,
    },
}

pub struct AuditLog {
    out: BufWriter<Box<dyn Write + Send>>,
    target: Target,
    next_seq: u64,
    /// Records whose write failed since the last successful one: reported in a `loss` record.
    failed: u64,
    /// The kernel's lost-event counter as far as `loss` records reported it.
    kernel_lost: u64,
    closed: bool,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl AuditLog {
    /// Opens `target`: a file path (appended to, parent created), or `-` for stdout. When
    /// the previous agent writing the file did not stop cleanly, the first record written is
    /// a `loss` record saying so.
    pub fn open(target: &Path, rotation: Rotation) -> Result<Self, AuditError> {
        if target == Path::new("-") {
            return Ok(Self::new(Box::new(io::stdout()), Target::Stdout, 1));
        }
        let open_err = |source| AuditError::Open {
            path: target.to_owned(),
            source,
        };
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(open_err)?;
        }
        let files = LogFiles::new(target);
        let last = files.last_seq().map_err(open_err)?;
        let torn = match read_tail(target) {
            Ok(tail) => is_torn(&tail),
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(open_err(err)),
        };
        let (previous, kernel_lost) =
            state::previous_stop(&files.state(), last, torn).map_err(open_err)?;
        state::mark_running(&files.state(), kernel_lost).map_err(open_err)?;
        let mut file = open_append(target).map_err(open_err)?;
        if torn {
            // A crash cut the last line short: end it, so the next record starts clean.
            file.write_all(b"\n").map_err(open_err)?;
        }
        let size = file.metadata().map_err(open_err)?.len();
        let sync = file.try_clone().map_err(open_err)?;
        let mut log = Self::new(
            Box::new(file),
            Target::File {
                files,
                rotation: Rotation {
                    keep: rotation.keep.max(1),
                    ..rotation
                },
                size,
                sync,
            },
            last + 1,
        );
        log.kernel_lost = kernel_lost;
        if let PreviousStop::Unaccounted { lost, reason } = previous {
            tracing::warn!(lost, %reason, "records may be missing from the audit log");
            log.loss(loss_record(lost, reason))?;
            log.flush()?;
        }
        Ok(log)
    }

    fn new(out: Box<dyn Write + Send>, target: Target, next_seq: u64) -> Self {
        Self {
            out: BufWriter::with_capacity(BUFFER_BYTES, out),
            target,
            next_seq,
            failed: 0,
            kernel_lost: 0,
            closed: false,
        }
    }

    pub fn connection(&mut self, mut record: ConnectionRecord) -> Result<u64, AuditError> {
        record.seq = self.take_seq()?;
        self.line(&record)?;
        Ok(record.seq)
    }

    pub fn policy(&mut self, mut record: PolicyRecord) -> Result<u64, AuditError> {
        record.seq = self.take_seq()?;
        self.line(&record)?;
        Ok(record.seq)
    }

    pub fn loss(&mut self, mut record: LossRecord) -> Result<u64, AuditError> {
        record.seq = self.take_seq()?;
        self.line(&record)?;
        Ok(record.seq)
    }

    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.out.flush().map_err(AuditError::Write)
    }

    /// Reports the events the kernel could not send: `total` is its counter, which counts
    /// from when the maps were created and survives agent restarts with them (pinned). Writes
    /// a `loss` record for what no record, of this agent or an earlier one, reported yet.
    pub fn kernel_losses(&mut self, total: u64) -> Result<Option<u64>, AuditError> {
        if total < self.kernel_lost {
            // New maps: their counter started again from 0.
            self.kernel_lost = 0;
        }
        if total == self.kernel_lost {
            return Ok(None);
        }
        let seq = self.loss(loss_record(
            total - self.kernel_lost,
            "ring buffer full".into(),
        ))?;
        self.flush()?;
        self.kernel_lost = total;
        if let Target::File { files, .. } = &self.target {
            state::mark_running(&files.state(), total).map_err(AuditError::Write)?;
        }
        Ok(Some(seq))
    }

    /// Flushes, syncs and records a clean stop in the state file. Called on shutdown (and
    /// from `Drop` if nobody did); later records are still written but the next start will
    /// not find them accounted for.
    pub fn close(&mut self) -> Result<(), AuditError> {
        self.closed = true;
        self.flush()?;
        if let Target::File { files, sync, .. } = &self.target {
            sync.sync_data().map_err(AuditError::Write)?;
            state::mark_stopped(&files.state(), self.next_seq - 1, self.kernel_lost)
                .map_err(AuditError::Write)?;
        }
        Ok(())
    }

    /// The next `seq`, after a `loss` record for records whose writes failed, if any.
    fn take_seq(&mut self) -> Result<u64, AuditError> {
        if self.failed > 0 {
            let record = LossRecord {
                seq: self.next_seq,
                ..loss_record(self.failed, "writing the audit log failed".into())
            };
            self.next_seq += 1;
            self.line(&record)?;
            self.failed = 0;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Writes one record as one line; a failed write is counted so that the gap it leaves in
    /// `seq` is explained by the next successful write.
    fn line(&mut self, record: &impl Serialize) -> Result<(), AuditError> {
        let result = self.write_line(record);
        if result.is_err() {
            self.failed += 1;
        }
        result
    }

    fn write_line(&mut self, record: &impl Serialize) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).map_err(AuditError::Encode)?;
        line.push(b'\n');
        let len = line.len() as u64;
        self.rotate_before(len).map_err(AuditError::Write)?;
        self.out.write_all(&line).map_err(AuditError::Write)?;
        if let Target::File { size, .. } = &mut self.target {
            *size += len;
        }
        Ok(())
    }

    /// Rotates when `incoming` more bytes would overflow the current file, so that a record
    /// never spans two files and every rotated file ends with a whole record.
    fn rotate_before(&mut self, incoming: u64) -> io::Result<()> {
        let Target::File {
            files,
            rotation,
            size,
            sync,
        } = &mut self.target
        else {
            return Ok(());
        };
        if rotation.max_bytes == 0 || *size == 0 || *size + incoming <= rotation.max_bytes {
            return Ok(());
        }
        self.out.flush()?;
        files.rotate(rotation.keep)?;
        let file = open_append(files.current())?;
        *sync = file.try_clone()?;
        // The old writer is flushed and empty; dropping it closes the rotated file.
        self.out = BufWriter::with_capacity(BUFFER_BYTES, Box::new(file));
        *size = 0;
        Ok(())
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if !self.closed
            && let Err(err) = self.close()
        {
            tracing::error!(%err, "closing the audit log failed");
        }
    }
}

fn loss_record(lost: u64, reason: String) -> LossRecord {
    LossRecord {
        seq: 0,
        time: rfc3339(SystemTime::now()),
        kind: "loss",
        lost,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(reason: &str) -> LossRecord {
        LossRecord {
            seq: 0,
            time: "1970-01-01T00:00:00.000000000Z".into(),
            kind: "loss",
            lost: 1,
            reason: reason.into(),
        }
    }

    fn records(path: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("every line is a whole record"))
            .collect()
    }

    fn seqs(paths: &[PathBuf]) -> Vec<u64> {
        paths
            .iter()
            .flat_map(|p| records(p))
            .map(|r| r["seq"].as_u64().expect("seq"))
            .collect()
    }

    #[test]
    fn seq_continues_across_reopen_and_ignores_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/audit.jsonl");
        let mut log = AuditLog::open(&path, Rotation::NEVER).expect("open");
        assert_eq!(log.loss(loss("a")).expect("write"), 1);
        assert_eq!(log.loss(loss("b")).expect("write"), 2);
        drop(log);
        // A crash mid-write leaves a partial line behind (and no clean stop).
        state::mark_running(&LogFiles::new(&path).state(), 0).expect("crashed state");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(b"{\"seq\":3,\"ti"))
            .expect("tear");
        let mut log = AuditLog::open(&path, Rotation::NEVER).expect("reopen");
        assert_eq!(log.loss(loss("c")).expect("write"), 4);
        log.close().expect("close");
        let text = fs::read_to_string(&path).expect("read");
        let whole: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let got: Vec<_> = whole
            .iter()
            .map(|r| (r["seq"].clone(), r["lost"].clone()))
            .collect();
        // The torn record never made it into the log: its seq is reused by the new agent's
        // first record, which says one record was lost.
        assert_eq!(
            got,
            [
                (1.into(), 1.into()),
                (2.into(), 1.into()),
                (3.into(), 1.into()),
                (4.into(), 1.into())
            ]
        );
        assert!(
            whole[2]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("did not stop cleanly"))
        );
    }

    #[test]
    fn kernel_losses_are_reported_once_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, Rotation::NEVER).expect("open");
        assert_eq!(log.kernel_losses(0).expect("none"), None);
        assert_eq!(log.kernel_losses(5).expect("five"), Some(1));
        assert_eq!(log.kernel_losses(5).expect("same"), None);
        drop(log);
        // Pinned maps kept counting while no agent ran: only the growth is new.
        let mut log = AuditLog::open(&path, Rotation::NEVER).expect("reopen");
        assert_eq!(log.kernel_losses(8).expect("three"), Some(2));
        drop(log);
        // New maps count from 0 again.
        let mut log = AuditLog::open(&path, Rotation::NEVER).expect("reopen");
        assert_eq!(log.kernel_losses(2).expect("two"), Some(3));
        drop(log);
        let lost: Vec<_> = records(&path).iter().map(|r| r["lost"].clone()).collect();
        assert_eq!(lost, [5, 3, 2]);
    }

    #[test]
    fn a_clean_stop_adds_no_loss_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, Rotation::NEVER).expect("open");
        log.loss(loss("a")).expect("write");
        drop(log);
        let mut log = AuditLog::open(&path, Rotation::NEVER).expect("reopen");
        assert_eq!(log.loss(loss("b")).expect("write"), 2);
        drop(log);
        let reasons: Vec<_> = records(&path).iter().map(|r| r["reason"].clone()).collect();
        assert_eq!(reasons, ["a", "b"]);
    }

    #[test]
    fn rotation_keeps_seq_contiguous_across_files_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let rotation = Rotation {
            max_bytes: 300,
            keep: 50,
        };
        for run in 0..3 {
            let mut log = AuditLog::open(&path, rotation).expect("open");
            for _ in 0..20 {
                log.loss(loss(&format!("run {run}"))).expect("write");
            }
            log.close().expect("close");
        }
        let files = LogFiles::new(&path).oldest_first();
        assert!(files.len() > 5, "rotated into {} files", files.len());
        for file in &files {
            let len = fs::metadata(file).expect("stat").len();
            assert!(len <= 300, "{} holds {len} bytes", file.display());
        }
        assert_eq!(seqs(&files), (1..=60).collect::<Vec<_>>());
        // A restart right after a rotation finds the last seq in .1.
        LogFiles::new(&path).rotate(50).expect("rotate");
        let mut log = AuditLog::open(&path, rotation).expect("reopen");
        assert_eq!(log.loss(loss("after")).expect("write"), 61);
    }

    #[test]
    fn rotation_drops_the_oldest_beyond_keep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(
            &path,
            Rotation {
                max_bytes: 200,
                keep: 2,
            },
        )
        .expect("open");
        for _ in 0..30 {
            log.loss(loss("x")).expect("write");
        }
        log.close().expect("close");
        let files = LogFiles::new(&path).oldest_first();
        assert_eq!(files.len(), 3, "{files:?}");
        let kept = seqs(&files);
        assert_eq!(kept.last(), Some(&30));
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
    }
}
