//! The real egress program loaded in this process with a benchmark policy in its maps: how
//! long compiling and applying took, how much kernel memory the maps hold, and a thread that
//! drains decision events the way the agent's reader does.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::MapInfo;
use egress_agent::{
    agent::EVENT_READ_INTERVAL,
    audit::decode_event,
    cgroup::{Hierarchy, find_cgroup2_root},
    compile::{CgroupResolution, compile},
    datapath::{Datapath, GenerationWriter},
    policy::PolicySet,
};

pub struct Loaded {
    pub datapath: Datapath,
    pub writer: GenerationWriter,
    pub hierarchy: Hierarchy,
}

/// Time spent compiling and applying one generation.
pub struct ApplyTimes {
    pub compile: Duration,
    pub apply: Duration,
    pub entries: usize,
}

impl Loaded {
    pub fn load() -> Result<Self> {
        let mut datapath = Datapath::load()?;
        let writer = datapath.generation_writer()?;
        let hierarchy = Hierarchy::new(find_cgroup2_root()?)?;
        Ok(Self {
            datapath,
            writer,
            hierarchy,
        })
    }

    /// Compiles `set` for the next generation and applies it (the first apply, or a reload).
    pub fn apply(&mut self, set: &PolicySet) -> Result<ApplyTimes> {
        let start = Instant::now();
        let compiled = compile(set, &CgroupResolution::default(), self.writer.next_parity())?;
        let compiled_at = Instant::now();
        let applied = self.writer.apply(&compiled, &self.hierarchy)?;
        anyhow::ensure!(
            applied.missing_cgroups.is_empty(),
            "cgroups missing: {:?}",
            applied.missing_cgroups
        );
        Ok(ApplyTimes {
            compile: compiled_at - start,
            apply: compiled_at.elapsed(),
            entries: applied.entries,
        })
    }

    /// Kernel memory of the program's maps (the `memlock` the kernel charges for each), in
    /// bytes: (all maps, the address tries, port tables and port trie only).
    pub fn map_memory(&mut self) -> Result<(u64, u64)> {
        let ids = self
            .datapath
            .program()?
            .info()?
            .map_ids()?
            .context("the kernel did not list the program's maps")?;
        let (mut total, mut tries) = (0, 0);
        for id in ids {
            let info = MapInfo::from_id(id)?;
            let fd = info.fd()?;
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            let memlock: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no memlock in {path}"))?;
            total += memlock;
            if info.name_as_str().is_some_and(is_policy_map) {
                tries += memlock;
            }
        }
        Ok((total, tries))
    }

    /// Accumulated (run time, run count) of the program while stats are enabled.
    pub fn run_stats(&mut self) -> Result<(u64, u64)> {
        let info = self.datapath.program()?.info()?;
        Ok((
            u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            info.run_count(),
        ))
    }
}

/// Reads and decodes events from the program's ring buffer until dropped.
pub struct EventDrain {
    stop: Arc<AtomicBool>,
    decoded: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EventDrain {
    pub fn start(loaded: &mut Loaded) -> Result<Self> {
        let mut ring = loaded.datapath.take_events()?;
        let stop = Arc::new(AtomicBool::new(false));
        let decoded = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, decoded) = (Arc::clone(&stop), Arc::clone(&decoded));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    while let Some(item) = ring.next() {
                        if decode_event(&item).is_some() {
                            decoded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // The agent's reader reads on this beat (the kernel program wakes it
                    // early only for a backlog).
                    thread::sleep(EVENT_READ_INTERVAL);
                }
            })
        };
        Ok(Self {
            stop,
            decoded,
            thread: Some(thread),
        })
    }

    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }
}

impl Drop for EventDrain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether the kernel's name of a map (cut to 15 bytes) is one of the address and port maps.
fn is_policy_map(kernel_name: &str) -> bool {
    use egress_common::maps::{ADDR4, ADDR6, PORT_TABLES, PORTS};
    [ADDR4, ADDR6, PORT_TABLES, PORTS]
        .iter()
        .any(|name| name.get(..15).unwrap_or(name) == kernel_name)
}
