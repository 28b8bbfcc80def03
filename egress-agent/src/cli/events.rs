//! `egress events`: the audit log, rotated files first, as one readable line per decision or
//! as the JSON records themselves; `--follow` keeps reading across rotations.

use std::{
    fs::File,
    io::{self, BufReader, Write},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::audit::LogFiles;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The audit log; its rotated files (`PATH.N` … `PATH.1`) are read first.
    #[arg(long, default_value = "/var/log/egress/audit.jsonl")]
    pub audit_log: PathBuf,
    /// Keep printing records as they are written, across rotations, until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Only decisions with this verdict (and `loss` records, which may hide such decisions).
    #[arg(long, value_parser = ["allow", "deny"])]
    pub verdict: Option<String>,
    /// Print the records as they are in the log: one JSON object a line.
    #[arg(long)]
    pub json: bool,
}

/// How often `--follow` looks for new records.
const POLL: Duration = Duration::from_millis(200);
/// Rotated files looked at while following; far more than anyone keeps.
const MAX_ROTATED: usize = 10_000;

pub fn run(args: &EventsArgs) -> anyhow::Result<ExitCode> {
    if !args.follow && LogFiles::new(&args.audit_log).oldest_first().is_empty() {
        anyhow::bail!("no audit log at {}", args.audit_log.display());
    }
    let mut view = View::new(args, io::stdout().lock(), io::stderr().lock());
    match read(&args.audit_log, args.follow, &mut view, &mut || true) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `egress events | head` closes the pipe early: not an error.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(err) => Err(anyhow::anyhow!(
            "reading {}: {err}",
            args.audit_log.display()
        )),
    }
}

/// Prints the whole log; when `follow`, then keeps printing while `more()` holds.
pub fn read(
    log: &Path,
    follow: bool,
    view: &mut View<impl Write, impl Write>,
    more: &mut dyn FnMut() -> bool,
) -> io::Result<()> {
    let mut tail = catch_up(log, view)?;
    if !follow {
        return Ok(());
    }
    while more() {
        view.out.flush()?;
        thread::sleep(POLL);
        tail = match tail.take() {
            Some(mut tail) => {
                tail = tail.advance(log, view)?;
                tail.read_new(view)?;
                Some(tail)
            }
            None => catch_up(log, view)?,
        };
    }
    Ok(())
}

/// Prints the rotated files, then the current one, which it returns to be followed.
fn catch_up(log: &Path, view: &mut View<impl Write, impl Write>) -> io::Result<Option<Tail>> {
    // The current file is opened first: a rotation while the older files are read is then
    // seen by the tail, which reads whatever was rotated past it.
    let mut tail = Tail::open(log)?;
    // Called again when following a log whose current file was missing: records of rotated
    // files already shown are skipped.
    view.skip_seen = true;
    for path in LogFiles::new(log).oldest_first() {
        let file = File::open(&path)?;
        if let Some(tail) = &tail
            && file.metadata()?.ino() == tail.inode
        {
            break;
        }
        view.lines(&mut BufReader::new(file), &mut Vec::new())?;
    }
    view.skip_seen = false;
    if let Some(tail) = &mut tail {
        tail.read_new(view)?;
    }
    Ok(tail)
}

/// The current file being followed.
struct Tail {
    reader: BufReader<File>,
    inode: u64,
    /// A line not yet complete.
    pending: Vec<u8>,
}

impl Tail {
    fn open(path: &Path) -> io::Result<Option<Self>> {
        match File::open(path) {
            Ok(file) => Ok(Some(Self {
                inode: file.metadata()?.ino(),
                reader: BufReader::new(file),
                pending: Vec::new(),
            })),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn read_new(&mut self, view: &mut View<impl Write, impl Write>) -> io::Result<()> {
        view.lines(&mut self.reader, &mut self.pending)
    }

    /// Moves to the new current file when the followed one was rotated away: reads what the
    /// writer added to the old one before it rotated, then the files rotated since (several
    /// when the writer rotated more than once between two polls), then the new current one.
    fn advance(mut self, path: &Path, view: &mut View<impl Write, impl Write>) -> io::Result<Self> {
        let rotated = match std::fs::metadata(path) {
            Ok(meta) => meta.ino() != self.inode,
            Err(err) if err.kind() == io::ErrorKind::NotFound => true,
            Err(err) => return Err(err),
        };
        if !rotated {
            return Ok(self);
        }
        self.read_new(view)?;
        let Some(next) = Self::open(path)? else {
            // Rotated, and the new file is not created yet.
            return Ok(self);
        };
        // Opened newest first and read oldest first; open files survive further renames.
        let files = LogFiles::new(path);
        let mut newer = Vec::new();
        for n in 1..=MAX_ROTATED {
            match File::open(files.rotated(n)) {
                Ok(file) if file.metadata()?.ino() == self.inode => break,
                Ok(file) => newer.push(file),
                Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                Err(err) => return Err(err),
            }
        }
        // When the followed file was already deleted, `newer` holds every rotated file, and
        // a rotation while walking them can show one twice: records already shown are skipped.
        view.skip_seen = true;
        for file in newer.into_iter().rev() {
            view.lines(&mut BufReader::new(file), &mut Vec::new())?;
        }
        view.skip_seen = false;
        Ok(next)
    }
}

/// Renders records and checks that their `seq` is contiguous.
pub struct View<O, E> {
    out: O,
    err: E,
    json: bool,
    verdict: Option<String>,
    last_seq: Option<u64>,
    /// Silently skip records at or before `last_seq` (catching up after rotations).
    skip_seen: bool,
}

impl<O: Write, E: Write> View<O, E> {
    pub fn new(args: &EventsArgs, out: O, err: E) -> Self {
        Self {
            out,
            err,
            json: args.json,
            verdict: args.verdict.clone(),
            last_seq: None,
            skip_seen: false,
        }
    }

    /// Prints every complete line `reader` has now; an incomplete last line stays in
    /// `pending` until its end is written.
    fn lines(&mut self, reader: &mut impl io::BufRead, pending: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let n = reader.read_until(b'\n', pending)?;
            if n == 0 || pending.last() != Some(&b'\n') {
                return Ok(());
            }
            let line = String::from_utf8_lossy(pending).trim().to_owned();
            pending.clear();
            if !line.is_empty() {
                self.line(&line)?;
            }
        }
    }

    fn line(&mut self, line: &str) -> io::Result<()> {
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            return writeln!(
                self.err,
                "egress: skipping a line that is not a record (torn by a crash?)"
            );
        };
        if let Some(seq) = record.get("seq").and_then(Value::as_u64) {
            if self.skip_seen && self.last_seq.is_some_and(|last| seq <= last) {
                return Ok(());
            }
            match self.last_seq {
                Some(last) if seq == last + 1 => {}
                Some(last) if seq > last + 1 => writeln!(
                    self.err,
                    "egress: records {}..={} are missing from the log",
                    last + 1,
                    seq - 1
                )?,
                Some(last) => writeln!(
                    self.err,
                    "egress: seq restarts at {seq} after {last}: another log was written here"
                )?,
                None => {}
            }
            self.last_seq = Some(seq);
        }
        if !self.shown(&record) {
            return Ok(());
        }
        if self.json {
            writeln!(self.out, "{line}")
        } else {
            writeln!(self.out, "{}", render(&record))
        }
    }

    fn shown(&self, record: &Value) -> bool {
        let Some(want) = &self.verdict else {
            return true;
        };
        match str_of(record, "kind") {
            "connection" => str_of(record, "verdict") == want,
            "loss" => true,
            _ => false,
        }
    }
}

fn str_of<'a>(record: &'a Value, field: &str) -> &'a str {
    record.get(field).and_then(Value::as_str).unwrap_or("")
}

fn num_of(record: &Value, field: &str) -> Option<u64> {
    record.get(field).and_then(Value::as_u64)
}

/// `2024-05-01T12:00:00.123456789Z` → `2024-05-01T12:00:00.123Z`.
fn short_time(time: &str) -> String {
    match time.split_once('.') {
        Some((seconds, fraction)) => {
            let digits: String = fraction
                .chars()
                .take_while(char::is_ascii_digit)
                .take(3)
                .collect();
            format!("{seconds}.{digits}Z")
        }
        None => time.to_owned(),
    }
}

/// One readable line for a record.
pub fn render(record: &Value) -> String {
    let time = short_time(str_of(record, "time"));
    match str_of(record, "kind") {
        "connection" => render_connection(&time, record),
        "policy" => {
            let list = |field: &str, sign: char| -> String {
                record
                    .get(field)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|name| format!(" {sign}{name}"))
                    .collect()
            };
            let error = record
                .get("error")
                .and_then(Value::as_str)
                .map(|error| format!(": {error}"))
                .unwrap_or_default();
            format!(
                "{time} policy {} generation {}: {} policies, {} rules{}{}{}{error}",
                str_of(record, "action"),
                num_of(record, "generation").unwrap_or(0),
                num_of(record, "policies").unwrap_or(0),
                num_of(record, "rules").unwrap_or(0),
                list("added", '+'),
                list("removed", '-'),
                list("changed", '~'),
            )
        }
        "loss" => {
            let count = match num_of(record, "lost") {
                Some(0) | None => "an unknown number of".to_owned(),
                Some(lost) => lost.to_string(),
            };
            format!(
                "{time} LOSS   {count} records lost: {}",
                str_of(record, "reason")
            )
        }
        other => format!("{time} {other} record (seq {:?})", num_of(record, "seq")),
    }
}

fn endpoint(record: &Value, ip: &str, port: &str) -> String {
    let address = str_of(record, ip);
    match (num_of(record, port), address.contains(':')) {
        (Some(port), true) => format!("[{address}]:{port}"),
        (Some(port), false) => format!("{address}:{port}"),
        (None, _) => address.to_owned(),
    }
}

fn render_connection(time: &str, record: &Value) -> String {
    let mut verdict = str_of(record, "verdict").to_owned();
    if let Some(audit) = record.get("audit_verdict").and_then(Value::as_str) {
        verdict = format!("{verdict} (audit {audit})");
    }
    let workload = record
        .get("unit")
        .and_then(Value::as_str)
        .unwrap_or_else(|| str_of(record, "cgroup"));
    let uid = num_of(record, "uid").unwrap_or(0);
    let process = match (
        record.get("comm").and_then(Value::as_str),
        num_of(record, "pid"),
    ) {
        (Some(comm), Some(pid)) => format!("{comm}[{pid}]"),
        (Some(comm), None) => comm.to_owned(),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => "-".to_owned(),
    };
    let peer = if str_of(record, "direction") == "ingress" {
        format!("from {}", endpoint(record, "src_ip", "src_port"))
    } else {
        endpoint(record, "dst_ip", "dst_port")
    };
    let host = record
        .get("dst_host")
        .and_then(Value::as_str)
        .map(|host| format!(" ({host})"))
        .unwrap_or_default();
    let rule = match (
        record.get("policy").and_then(Value::as_str),
        record.get("rule").and_then(Value::as_str),
    ) {
        (Some(policy), Some(rule)) => format!("{policy}/{rule}"),
        _ => "-".to_owned(),
    };
    let dropped = match num_of(record, "dropped_packets") {
        Some(n) if n > 1 => format!(" ({n} packets dropped)"),
        _ => String::new(),
    };
    format!(
        "{time} {verdict:<5} {workload} uid={uid} {process} -> {} {peer}{host} rule {rule}{dropped}",
        str_of(record, "protocol"),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::audit::{AuditLog, Rotation, record::LossRecord};

    fn args(json: bool, verdict: Option<&str>) -> EventsArgs {
        EventsArgs {
            audit_log: PathBuf::new(),
            follow: false,
            verdict: verdict.map(str::to_owned),
            json,
        }
    }

    fn loss(n: u64) -> LossRecord {
        LossRecord {
            seq: 0,
            time: "2024-05-01T12:00:00.123456789Z".into(),
            kind: "loss",
            lost: n,
            reason: "test".into(),
        }
    }

    fn seqs(out: &[u8]) -> Vec<u64> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).expect("json")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect()
    }

    #[test]
    fn renders_a_decision_on_one_line() {
        let record = serde_json::json!({
            "seq": 7, "time": "2024-05-01T12:00:00.123456789Z", "kind": "connection",
            "direction": "egress", "verdict": "deny", "policy": "no-telemetry",
            "rule": "telemetry", "generation": 2, "protocol": "tcp", "src_ip": "2001:db8::1",
            "src_port": 40000, "dst_ip": "2001:db8:2::10", "dst_port": 443,
            "dst_host": "t.example.com", "cgroup": "/system.slice/app.service",
            "unit": "app.service", "uid": 1000, "pid": 42, "comm": "curl", "dropped_packets": 3
        });
        assert_eq!(
            render(&record),
            "2024-05-01T12:00:00.123Z deny  app.service uid=1000 curl[42] -> tcp \
             [2001:db8:2::10]:443 (t.example.com) rule no-telemetry/telemetry (3 packets dropped)"
        );
        let lost = serde_json::json!({"seq": 8, "time": "2024-05-01T12:00:01Z", "kind": "loss",
            "lost": 0, "reason": "crash"});
        assert_eq!(
            render(&lost),
            "2024-05-01T12:00:01Z LOSS   an unknown number of records lost: crash"
        );
    }

    #[test]
    fn reads_rotated_files_in_order_filters_and_reports_gaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let rotation = Rotation {
            max_bytes: 250,
            keep: 100,
        };
        let mut log = AuditLog::open(&path, rotation).expect("open");
        for n in 0..40 {
            log.loss(loss(n)).expect("write");
        }
        log.close().expect("close");
        drop(log);
        assert!(LogFiles::new(&path).rotated(3).exists(), "rotated");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut view = View::new(&args(true, None), &mut out, &mut err);
        read(&path, false, &mut view, &mut || false).expect("read");
        assert_eq!(seqs(&out), (1..=40).collect::<Vec<_>>());
        assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));

        // A filter keeps decisions with the verdict and loss records (which may hide such
        // decisions); a gap in seq is reported.
        let gappy = dir.path().join("gappy.jsonl");
        let lines = [
            r#"{"seq":1,"kind":"connection","verdict":"allow"}"#,
            r#"{"seq":2,"kind":"connection","verdict":"deny"}"#,
            r#"{"seq":5,"kind":"loss","lost":3,"reason":"x"}"#,
            r#"{"seq":6,"kind":"policy","action":"applied"}"#,
        ];
        std::fs::write(&gappy, lines.join("\n") + "\n").expect("write");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut view = View::new(&args(true, Some("deny")), &mut out, &mut err);
        read(&gappy, false, &mut view, &mut || false).expect("read");
        assert_eq!(seqs(&out), [2, 5]);
        let err = String::from_utf8_lossy(&err);
        assert!(
            err.contains("records 3..=4 are missing from the log"),
            "{err}"
        );
    }

    #[test]
    fn follow_reads_every_record_across_rotations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let writer_path = path.clone();
        let writer = thread::spawn(move || {
            let rotation = Rotation {
                max_bytes: 400,
                keep: 3,
            };
            let mut log = AuditLog::open(&writer_path, rotation).expect("open");
            for n in 0..60 {
                log.loss(loss(n)).expect("write");
                log.flush().expect("flush");
                thread::sleep(Duration::from_millis(20));
            }
            log.close().expect("close");
        });
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut view = View::new(&args(true, None), &mut out, &mut err);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut polls_after_the_writer = 0;
        read(&path, true, &mut view, &mut || {
            if writer.is_finished() {
                polls_after_the_writer += 1;
            }
            polls_after_the_writer < 3 && Instant::now() < deadline
        })
        .expect("follow");
        writer.join().expect("writer");
        // The writer rotates several times between two polls and keeps only 3 files.
        assert_eq!(seqs(&out), (1..=60).collect::<Vec<_>>());
        assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    }
}
