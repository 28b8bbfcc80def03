//! The event reader: turns what the kernel program puts in the ring buffer into connection
//! records, for as long as the agent runs.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::oneshot};

use super::dns::LearnedNames;
use crate::{
    audit::{AuditLog, KernelClock, RuleNames, decode_event, enrich, record::ConnectionRecord},
    cgroup::PathCache,
    kubernetes::owners::SharedOwners,
};

/// Turns ring buffer items into connection records.
pub struct EventWriter {
    pub clock: KernelClock,
    pub audit: Arc<Mutex<AuditLog>>,
    pub rule_names: Arc<Mutex<RuleNames>>,
    pub cgroups: PathCache,
    /// This node's pods (Kubernetes mode): who each record's cgroup belongs to.
    pub pods: SharedOwners,
    /// Names of addresses learned from DNS, and the ring buffer of the answers.
    pub names: LearnedNames,
    pub dns_events: Option<RingBuf<MapData>>,
    /// Connection records written, for `egress status` and the metrics.
    pub written: Arc<AtomicU64>,
    /// Records whose write failed in a row: the first failure is logged, and the recovery.
    pub failing: u64,
}

impl EventWriter {
    /// Writes every event in the ring buffer now.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        while let Some(item) = ring.next() {
            // Answers first, before each event: the answer that named an address was read
            // before any connection to it could start, but it may have been queued while the
            // events before this one were written (the answer to a query this loop just
            // recorded). Polling an empty ring buffer is two loads.
            self.drain_names();
            let Some(event) = decode_event(&item) else {
                tracing::error!(
                    len = item.len(),
                    "an event of unexpected size; agent and kernel program disagree"
                );
                continue;
            };
            let record = {
                let names = self
                    .rule_names
                    .lock()
                    .map_err(|_| anyhow::anyhow!("rule names poisoned"))?;
                enrich(&event, &self.clock, &names, &mut self.cgroups)
            };
            let (namespace, pod, container) = self.pods.lookup(&record.cgroup);
            let (dst_host, dst_names) = self
                .names
                .lookup(event.cgroup_id, record.dst_ip, Instant::now())
                .map(|names| {
                    (
                        Some(names.host.clone()),
                        names.all.iter().cloned().collect(),
                    )
                })
                .unwrap_or_default();
            let record = ConnectionRecord {
                namespace,
                pod,
                container,
                dst_host,
                dst_names,
                ..record
            };
            self.write(record)?;
        }
        Ok(())
    }

    /// Reads the DNS answers waiting in their ring buffer into the names table.
    pub fn drain_names(&mut self) {
        if let Some(ring) = self.dns_events.as_mut() {
            let undecoded = self.names.drain(ring);
            if undecoded > 0 {
                tracing::error!(
                    undecoded,
                    "DNS events of unexpected shape; agent and kernel program disagree"
                );
            }
        }
    }

    /// Writes one record. A failed write (a full disk, a rotation that failed) does not end
    /// the reader: the audit log counts the record and explains the gap in `seq` with a
    /// `loss` record at the next write that works, so records flow again once the cause is
    /// gone. Only a poisoned audit log, which nothing can write again, is an error.
    pub fn write(&mut self, record: ConnectionRecord) -> anyhow::Result<()> {
        let result = self
            .audit
            .lock()
            .map_err(|_| anyhow::anyhow!("audit log poisoned"))?
            .connection(record);
        match result {
            Ok(_) => {
                if self.failing > 0 {
                    tracing::warn!(
                        failed = self.failing,
                        "connection records are written again; a loss record counts the gap"
                    );
                    self.failing = 0;
                }
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                if self.failing == 0 {
                    tracing::error!(%err, "writing a connection record failed; records are lost until writes work again");
                }
                self.failing += 1;
            }
        }
        Ok(())
    }
}

/// How often the reader reads the events waiting. The kernel program wakes the reader only
/// for a backlog (`capacity::EVENTS_WAKE_BYTES`): a wakeup per event cost the workloads an
/// interrupt and a context switch per connection. Records reach the audit log at its next
/// flush (every second) either way.
pub const READ_INTERVAL: Duration = Duration::from_millis(10);

/// Writes events as they arrive; when `stop` fires (the program is detached), writes those
/// left in the ring buffer and returns.
pub async fn read_events(
    events: RingBuf<MapData>,
    mut writer: EventWriter,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the ring buffer, whose map fd stays open and unchanged until
    // the AsyncFd is dropped.
    let mut events =
        unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
            .map_err(|err| anyhow::anyhow!("registering the event ring buffer: {err}"))?;
    // DNS answers are read on the same beat when no connection comes, so that their ring
    // buffer does not fill while the workloads only resolve names.
    let mut read_tick = tokio::time::interval(READ_INTERVAL);
    read_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = read_tick.tick() => {
                writer.drain_names();
                writer.drain(events.get_mut())?;
            }
            ready = events.readable_mut() => {
                let mut guard = ready?;
                writer.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            _ = &mut stop => return writer.drain(events.get_mut()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, net::Ipv4Addr};

    use super::*;
    use crate::agent::dns::DnsArgs;
    use crate::{audit::Rotation, cgroup::Hierarchy};

    fn record() -> ConnectionRecord {
        ConnectionRecord {
            seq: 0,
            time: "1970-01-01T00:00:00.000000000Z".into(),
            kind: "connection",
            direction: "egress",
            verdict: "deny",
            audit_verdict: None,
            policy: None,
            rule: None,
            generation: 1,
            protocol: "tcp".into(),
            src_ip: Ipv4Addr::LOCALHOST.into(),
            src_port: None,
            dst_ip: Ipv4Addr::new(203, 0, 113, 10).into(),
            dst_port: Some(80),
            cgroup: "/".into(),
            unit: None,
            namespace: None,
            pod: None,
            container: None,
            dst_host: None,
            dst_names: Vec::new(),
            uid: 0,
            pid: None,
            comm: None,
            dropped_packets: None,
        }
    }

    #[test]
    fn failed_writes_do_not_end_the_reader_and_the_gap_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("cgroup");
        fs::create_dir(&root).expect("mkdir");
        fs::write(root.join("cgroup.procs"), "").expect("fake cgroup root");
        let log = dir.path().join("audit.jsonl");
        // Every record after the first rotates the file, moving `.1` to `.2` first; while
        // `.2` is a non-empty directory, that rename, and so the write, fails.
        let rotation = Rotation {
            max_bytes: 1,
            keep: 2,
        };
        let audit = Arc::new(Mutex::new(AuditLog::open(&log, rotation).expect("open")));
        fs::write(dir.path().join("audit.jsonl.1"), "").expect("write .1");
        let blocker = dir.path().join("audit.jsonl.2");
        fs::create_dir(&blocker).expect("mkdir");
        fs::write(blocker.join("x"), "").expect("write");
        let mut writer = EventWriter {
            clock: KernelClock::boot(),
            audit: Arc::clone(&audit),
            rule_names: Arc::default(),
            cgroups: PathCache::new(Hierarchy::new(root).expect("hierarchy")),
            pods: SharedOwners::default(),
            names: LearnedNames::new(&DnsArgs {
                dns_grace_seconds: 5,
                dns_max_ttl_seconds: 60,
            }),
            dns_events: None,
            written: Arc::default(),
            failing: 0,
        };
        writer.write(record()).expect("first record");
        for _ in 0..3 {
            writer
                .write(record())
                .expect("a failed write is not an error");
        }
        assert_eq!(writer.failing, 3);
        assert_eq!(writer.written.load(Ordering::Relaxed), 1);
        fs::remove_dir_all(&blocker).expect("unblock");
        writer.write(record()).expect("written again");
        assert_eq!(writer.failing, 0);
        assert_eq!(writer.written.load(Ordering::Relaxed), 2);
        audit.lock().expect("lock").close().expect("close");
        let files = crate::audit::LogFiles::new(&log).oldest_first();
        let records: Vec<serde_json::Value> = files
            .iter()
            .flat_map(|path| {
                let text = fs::read_to_string(path).expect("read");
                text.lines()
                    .map(|line| serde_json::from_str(line).expect("json"))
                    .collect::<Vec<_>>()
            })
            .collect();
        let summary: Vec<(u64, &str, u64)> = records
            .iter()
            .map(|r| {
                (
                    r["seq"].as_u64().unwrap_or_default(),
                    r["kind"].as_str().unwrap_or_default(),
                    r["lost"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [(1, "connection", 0), (5, "loss", 3), (6, "connection", 0)]
        );
    }
}
