//! The files of one audit log: the current file (`audit.jsonl`), its rotated predecessors
//! (`audit.jsonl.1` the newest … `audit.jsonl.N` the oldest) and the state file.

use std::{
    ffi::OsString,
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

/// Rotated files probed when listing or resuming; far more than anyone keeps.
const MAX_ROTATED: usize = 10_000;

/// How far back from the end of a file the last complete record is searched first: one
/// torn record plus one whole record fit many times over. When they do not (a record
/// larger than this), the search reaches further back, up to the whole file.
const TAIL_BYTES: u64 = 1 << 17;

#[derive(Clone, Debug)]
pub struct LogFiles {
    current: PathBuf,
}

impl LogFiles {
    pub fn new(current: &Path) -> Self {
        Self {
            current: current.to_owned(),
        }
    }

    pub fn current(&self) -> &Path {
        &self.current
    }

    /// `audit.jsonl.N`: 1 is the most recently rotated.
    pub fn rotated(&self, n: usize) -> PathBuf {
        self.with_suffix(&n.to_string())
    }

    /// The state file: whether the last agent stopped cleanly (see `state.rs`).
    pub fn state(&self) -> PathBuf {
        self.with_suffix("state")
    }

    fn with_suffix(&self, suffix: &str) -> PathBuf {
        let mut name = OsString::from(self.current.as_os_str());
        name.push(".");
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Every existing file of the log, oldest first: `.N`, …, `.1`, then the current one.
    pub fn oldest_first(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = (1..=MAX_ROTATED)
            .map(|n| self.rotated(n))
            .take_while(|path| path.exists())
            .collect();
        files.reverse();
        if self.current.exists() {
            files.push(self.current.clone());
        }
        files
    }

    /// Shifts `.1`…`.keep-1` up by one (the oldest, `.keep`, is overwritten) and moves the
    /// current file to `.1`. The caller flushed the current file and opens a new one after.
    pub fn rotate(&self, keep: usize) -> io::Result<()> {
        let keep = keep.max(1);
        for n in (1..keep).rev() {
            match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        fs::rename(&self.current, self.rotated(1))
    }

    /// Where `seq` resumes: the last record of the newest file that holds one, so a
    /// rotation just before a stop (current file empty or missing) loses nothing.
    pub fn last_seq(&self) -> io::Result<u64> {
        let newest_first =
            std::iter::once(self.current.clone()).chain((1..=MAX_ROTATED).map(|n| self.rotated(n)));
        for (index, path) in newest_first.enumerate() {
            match last_seq_of(&path) {
                Ok(Some(seq)) => return Ok(seq),
                Ok(None) => {}
                // The current file may be missing; a missing rotated file ends the set.
                Err(err) if err.kind() == io::ErrorKind::NotFound && index == 0 => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(err) => return Err(err),
            }
        }
        Ok(0)
    }
}

/// The `seq` of the last complete record of the file at `path`: searched in the last
/// [`TAIL_BYTES`], then in windows four times larger each, up to the whole file.
fn last_seq_of(path: &Path) -> io::Result<Option<u64>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut window = TAIL_BYTES;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        // A window that does not start the file may start inside a record: its first line
        // is not a whole record, and the next, larger window sees it whole.
        let whole = if start == 0 {
            &text[..]
        } else {
            text.split_once('\n').map_or("", |(_, rest)| rest)
        };
        if let Some(seq) = last_seq_in(whole) {
            return Ok(Some(seq));
        }
        if start == 0 {
            return Ok(None);
        }
        window = window.saturating_mul(4);
    }
}

/// The last [`TAIL_BYTES`] of a file, lossily decoded.
pub fn read_tail(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether a file's text ends in a torn line (a write cut short by a crash).
pub fn is_torn(tail: &str) -> bool {
    !tail.is_empty() && !tail.ends_with('\n')
}

/// The `seq` of the last complete record in `tail`.
fn last_seq_in(tail: &str) -> Option<u64> {
    let complete = tail.rfind('\n').map_or("", |end| &tail[..end]);
    complete
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|record| record.get("seq")?.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_shifts_files_and_resume_looks_past_an_empty_current_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::new(&dir.path().join("audit.jsonl"));
        assert_eq!(files.last_seq().expect("nothing yet"), 0);
        for seq in 1..=4 {
            fs::write(files.current(), format!("{{\"seq\":{seq}}}\n")).expect("write");
            files.rotate(2).expect("rotate");
        }
        // Keeping two: the records of the last two rotations survive, oldest first.
        let names: Vec<String> = files
            .oldest_first()
            .iter()
            .map(|p| fs::read_to_string(p).expect("read"))
            .collect();
        assert_eq!(names, ["{\"seq\":3}\n", "{\"seq\":4}\n"]);
        assert!(!files.rotated(3).exists());
        // No current file: resume from .1.
        assert_eq!(files.last_seq().expect("resume"), 4);
        fs::write(files.current(), "").expect("empty current");
        assert_eq!(files.last_seq().expect("resume"), 4);
        fs::write(files.current(), "{\"seq\":5}\n{\"seq\":6,\"ti").expect("torn");
        assert_eq!(files.last_seq().expect("resume"), 5);
        assert!(is_torn(&read_tail(files.current()).expect("tail")));
        assert_eq!(
            files.state().file_name().and_then(|n| n.to_str()),
            Some("audit.jsonl.state")
        );
    }

    #[test]
    fn resume_finds_a_last_record_larger_than_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles::new(&dir.path().join("audit.jsonl"));
        // .1 ends at seq 3; the current file's last record, seq 9, is 1 MiB long.
        fs::write(files.rotated(1), "{\"seq\":3}\n").expect("write .1");
        let big = "x".repeat(1 << 20);
        let text = format!("{{\"seq\":8}}\n{{\"seq\":9,\"error\":\"{big}\"}}\n");
        assert!(text.len() as u64 > 4 * TAIL_BYTES);
        fs::write(files.current(), &text).expect("write current");
        assert_eq!(files.last_seq().expect("resume"), 9);
        // The same record, torn after it by a crash, and as the only record of the file.
        fs::write(files.current(), format!("{text}{{\"seq\":10,\"ti")).expect("torn");
        assert_eq!(files.last_seq().expect("resume"), 9);
        fs::write(files.current(), &text[text.find('\n').expect("line") + 1..]).expect("only");
        assert_eq!(files.last_seq().expect("resume"), 9);
        // A file of one huge torn line holds no record: resume from .1.
        fs::write(files.current(), format!("{{\"seq\":11,\"error\":\"{big}")).expect("torn");
        assert_eq!(files.last_seq().expect("resume"), 3);
    }
}
