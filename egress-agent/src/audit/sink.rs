//! Where records go: a JSON Lines file (or stdout), with `seq` resumed from the file's last
//! record so that it stays contiguous across restarts.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Read as _, Seek as _, SeekFrom, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::record::{ConnectionRecord, LossRecord, PolicyRecord};

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

pub struct AuditLog {
    out: BufWriter<Box<dyn Write + Send>>,
    next_seq: u64,
}

impl AuditLog {
    /// Opens `target`: a file path (appended to, parent created), or `-` for stdout.
    pub fn open(target: &Path) -> Result<Self, AuditError> {
        if target == Path::new("-") {
            return Ok(Self::new(Box::new(io::stdout()), 1));
        }
        let open_err = |source| AuditError::Open {
            path: target.to_owned(),
            source,
        };
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(open_err)?;
        }
        let (last, torn) = last_seq(target).map_err(open_err)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(target)
            .map_err(open_err)?;
        if torn {
            // A crash cut the last line short: end it, so the next record starts clean.
            file.write_all(b"\n").map_err(open_err)?;
        }
        Ok(Self::new(Box::new(file), last + 1))
    }

    fn new(out: Box<dyn Write + Send>, next_seq: u64) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, out),
            next_seq,
        }
    }

    pub fn connection(&mut self, mut record: ConnectionRecord) -> Result<u64, AuditError> {
        record.seq = self.take_seq();
        self.line(&record)?;
        Ok(record.seq)
    }

    pub fn policy(&mut self, mut record: PolicyRecord) -> Result<u64, AuditError> {
        record.seq = self.take_seq();
        self.line(&record)?;
        Ok(record.seq)
    }

    pub fn loss(&mut self, mut record: LossRecord) -> Result<u64, AuditError> {
        record.seq = self.take_seq();
        self.line(&record)?;
        Ok(record.seq)
    }

    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.out.flush().map_err(AuditError::Write)
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn line(&mut self, record: &impl Serialize) -> Result<(), AuditError> {
        serde_json::to_writer(&mut self.out, record).map_err(AuditError::Encode)?;
        self.out.write_all(b"\n").map_err(AuditError::Write)
    }
}

/// The `seq` of the last complete record in the file (0 if none), and whether the file ends
/// in a torn line.
fn last_seq(path: &Path) -> io::Result<(u64, bool)> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((0, false)),
        Err(err) => return Err(err),
    };
    // Records are short; the last complete one lies within the last 64 KiB.
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(1 << 16)))?;
    let mut tail = String::new();
    file.read_to_string(&mut tail)?;
    let torn = !tail.is_empty() && !tail.ends_with('\n');
    let seq = tail
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|record| record.get("seq")?.as_u64())
        .unwrap_or(0);
    Ok((seq, torn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::LossRecord;

    fn loss(reason: &str) -> LossRecord {
        LossRecord {
            seq: 0,
            time: "1970-01-01T00:00:00.000000000Z".into(),
            kind: "loss",
            lost: 1,
            reason: reason.into(),
        }
    }

    #[test]
    fn seq_continues_across_reopen_and_ignores_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/audit.jsonl");
        let mut log = AuditLog::open(&path).expect("open");
        assert_eq!(log.loss(loss("a")).expect("write"), 1);
        assert_eq!(log.loss(loss("b")).expect("write"), 2);
        log.flush().expect("flush");
        drop(log);
        // A crash mid-write leaves a partial line behind.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(b"{\"seq\":3,\"ti"))
            .expect("tear");
        let mut log = AuditLog::open(&path).expect("reopen");
        assert_eq!(log.loss(loss("c")).expect("write"), 3);
        log.flush().expect("flush");
        let text = fs::read_to_string(&path).expect("read");
        let last = text.lines().last().expect("a line");
        let record: serde_json::Value =
            serde_json::from_str(last).expect("the new record is whole");
        assert_eq!(record["seq"], 3);
    }
}
