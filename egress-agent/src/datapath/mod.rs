//! The kernel side as the agent sees it: loading the program, attaching it at the cgroup2
//! root, writing compiled policy generations into its maps, and reading its counters.

pub mod btf;
pub mod generation;
pub mod pins;
pub mod test_run;
pub mod test_run_dns;

use std::{fs::File, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, ProgramError,
        cgroup_skb::CgroupSkbLink,
        cgroup_sock::CgroupSockLink,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, PinnedLink},
    },
};
use egress_common::{
    EGRESS_PROGRAM, RuleHits, counter,
    dns::{DnsConfig, Learned, LearnedKey},
    dns_slots, maps, programs,
};
pub use generation::{Applied, GenerationWriter};
use pins::{PinDir, PinError};

/// The compiled kernel object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress"));

/// Every program of the object, in attach order: attribution first, then the early
/// rejections, then the packet backstop, so that no moment exists in which a call is judged
/// but its packets are not.
pub const PROGRAMS: [&str; 8] = [
    programs::SOCK_CREATE,
    programs::SOCK_RELEASE,
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::EGRESS,
    programs::INGRESS,
];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "loading the eBPF object failed (this needs root, or CAP_BPF with CAP_NET_ADMIN, and a kernel with BTF): {0}"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("loading program {name} into the kernel (verifier) failed: {source}")]
    Verify {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("reading the kernel's information on program {name}: {source}")]
    Info {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {name} to cgroup {path} failed: {source}")]
    Attach {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("pinning the link of {name} at {path}: {message}")]
    PinLink {
        name: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// A program attached to a cgroup; dropping it detaches the program.
/// A program attached to a cgroup.
enum AttachedLink {
    /// Owned by this process only: dropping it detaches the program.
    Owned(#[expect(dead_code, reason = "held for its Drop, which detaches")] FdLink),
    /// Pinned in bpffs: it stays attached after this process exits, until unpinned.
    Pinned {
        #[expect(dead_code, reason = "held to keep the pin's link open while we run")]
        link: PinnedLink,
        path: PathBuf,
    },
}

/// How the programs came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attachment {
    /// Attached by this agent.
    Fresh,
    /// Pinned links of the same program version were found and kept: no gap.
    Adopted,
}

/// The loaded programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    pins: Option<PinDir>,
    attached_to: Option<PathBuf>,
    links: Vec<AttachedLink>,
}

impl Datapath {
    /// Loads the programs and creates their maps, without attaching them anywhere. The maps
    /// are private to this process.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(None)
    }

    /// Loads the programs with every map pinned in `pins`: maps already pinned there (by an
    /// earlier agent of the same version) are reused with their contents.
    pub fn load_pinned(pins: PinDir) -> Result<Self, DatapathError> {
        Self::load_with(Some(pins))
    }

    fn load_with(pins: Option<PinDir>) -> Result<Self, DatapathError> {
        // The socket hooks read the caller's fsuid through these; without them they fall back
        // to the real uid, which differs from a socket's owner in set-uid programs.
        let offsets = btf::cred_offsets_from_sys_fs();
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = match &pins {
            Some(pins) => maps::ALL
                .iter()
                .map(|name| (*name, pins.map(name)))
                .collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        match &offsets {
            Ok(btf::CredOffsets {
                task_cred,
                cred_fsuid,
            }) => {
                loader.override_global("TASK_CRED_OFFSET", task_cred, true);
                loader.override_global("CRED_FSUID_OFFSET", cred_fsuid, true);
            }
            Err(err) => tracing::warn!(
                %err,
                "socket owner uids come from the real uid at connect(): set-uid programs may be judged by another uid there than by the packet hook"
            ),
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DatapathError::Load)?;
        for name in PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(DatapathError::Missing {
                kind: "program",
                name,
            })?;
            let loaded = match program {
                Program::CgroupSkb(program) => program.load(),
                Program::CgroupSock(program) => program.load(),
                Program::CgroupSockAddr(program) => program.load(),
                _ => {
                    return Err(DatapathError::Missing {
                        kind: "cgroup program",
                        name,
                    });
                }
            };
            loaded.map_err(|source| DatapathError::Verify { name, source })?;
        }
        load_dns_reader(&mut ebpf)?;
        Ok(Self {
            ebpf,
            pins,
            attached_to: None,
            links: Vec::new(),
        })
    }

    /// Attaches every program to the cgroup at `cgroup` (the cgroup2 root, so that every
    /// process on the host, including cgroups created later, is covered).
    ///
    /// With pins, links of this program version that are already pinned are adopted as they
    /// are; otherwise new links are attached and pinned, and only then are the links of other
    /// versions removed, so enforcement never pauses. On failure, whatever this call attached
    /// is detached again.
    pub fn attach(&mut self, cgroup: PathBuf) -> Result<Attachment, DatapathError> {
        if let Some(pins) = &self.pins
            && let Some(adopted) = adopt(pins)
        {
            self.links = adopted;
            self.attached_to = Some(cgroup);
            // An upgrade that died before removing the old version left it attached: its
            // programs would go on judging by their frozen policy beside ours.
            remove_other_versions(pins)?;
            return Ok(Attachment::Adopted);
        }
        let file = File::open(&cgroup).map_err(|source| DatapathError::OpenCgroup {
            path: cgroup.clone(),
            source,
        })?;
        // `Single`: aya 0.14 turns `AllowMultiple` into a link flag that the kernel rejects
        // with EINVAL, and links on a cgroup coexist with other programs anyway.
        let mode = CgroupAttachMode::Single;
        let mut links = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let attach_error = |source| DatapathError::Attach {
                name,
                path: cgroup.clone(),
                source,
            };
            type Boxed = Box<dyn std::error::Error + Send + Sync>;
            let link: Result<FdLink, Boxed> = match self.ebpf.program_mut(name) {
                Some(Program::CgroupSkb(program)) => program
                    .attach(
                        &file,
                        if name == programs::INGRESS {
                            CgroupSkbAttachType::Ingress
                        } else {
                            CgroupSkbAttachType::Egress
                        },
                        mode,
                    )
                    .and_then(|id| program.take_link(id))
                    .map_err(Boxed::from)
                    .and_then(|link: CgroupSkbLink| FdLink::try_from(link).map_err(Boxed::from)),
                Some(Program::CgroupSock(program)) => program
                    .attach(&file, mode)
                    .and_then(|id| program.take_link(id))
                    .map_err(Boxed::from)
                    .and_then(|link: CgroupSockLink| FdLink::try_from(link).map_err(Boxed::from)),
                Some(Program::CgroupSockAddr(program)) => program
                    .attach(&file, mode)
                    .and_then(|id| program.take_link(id))
                    .map_err(Boxed::from)
                    .and_then(|link: CgroupSockAddrLink| {
                        FdLink::try_from(link).map_err(Boxed::from)
                    }),
                _ => Err(Boxed::from(ProgramError::NotLoaded)),
            };
            let link = link.map_err(attach_error)?;
            // On error, `links` drops here: owned links detach; pinned ones stay attached by
            // their pins, with whatever generation the maps hold (a restart adopts them).
            links.push(match &self.pins {
                Some(pins) => pin_link(pins, name, link)?,
                None => AttachedLink::Owned(link),
            });
        }
        self.links = links;
        self.attached_to = Some(cgroup);
        if let Some(pins) = &self.pins {
            remove_other_versions(pins)?;
        }
        Ok(Attachment::Fresh)
    }

    /// Detaches every program, packet backstop first, and removes their pins; enforcement
    /// stops. Pinned maps stay (an agent started later finds its generation there).
    pub fn detach(&mut self) {
        while let Some(link) = self.links.pop() {
            if let AttachedLink::Pinned { path, .. } = &link
                && let Err(err) = std::fs::remove_file(path)
            {
                tracing::warn!(%err, path = %path.display(), "removing a link pin failed");
            }
            drop(link);
        }
        self.attached_to = None;
    }

    /// Lets go of the programs without detaching them: pinned links stay attached after this
    /// process exits. Links that are not pinned cannot outlive it and are detached.
    pub fn keep_attached(&mut self) {
        self.links
            .retain(|link| matches!(link, AttachedLink::Pinned { .. }));
        self.links.clear();
        self.attached_to = None;
    }

    /// The pin directory, when the datapath is pinned.
    pub fn pins(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    pub fn attached_to(&self) -> Option<&PathBuf> {
        self.attached_to.as_ref()
    }

    /// Takes the maps a generation writer needs; call once.
    pub fn generation_writer(&mut self) -> Result<GenerationWriter, DatapathError> {
        GenerationWriter::new(&mut self.ebpf)
    }

    /// Takes the event ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        take(&mut self.ebpf, maps::EVENTS)
    }

    /// Takes the learned-address map, to count its entries; call once.
    pub fn take_learned(&mut self) -> Result<LearnedAddresses, DatapathError> {
        Ok(LearnedAddresses {
            map: take(&mut self.ebpf, maps::LEARNED)?,
        })
    }

    /// Takes the ring buffer of DNS answers; call once.
    pub fn take_dns_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        take(&mut self.ebpf, maps::DNS_EVENTS)
    }

    /// Sets how long learned addresses live beyond their records' TTL.
    pub fn set_dns_config(&mut self, config: DnsConfig) -> Result<(), DatapathError> {
        let fail = |source| DatapathError::Map {
            name: maps::DNS_CONFIG,
            source,
        };
        let map = self
            .ebpf
            .map_mut(maps::DNS_CONFIG)
            .ok_or(DatapathError::Missing {
                kind: "map",
                name: maps::DNS_CONFIG,
            })?;
        let mut array: Array<&mut MapData, DnsConfig> = Array::try_from(map).map_err(fail)?;
        array.set(0, config, 0).map_err(fail)
    }

    /// Takes the per-rule hit counters; call once.
    pub fn take_rule_hits(&mut self) -> Result<RuleHitCounters, DatapathError> {
        Ok(RuleHitCounters {
            map: take(&mut self.ebpf, maps::RULE_HITS)?,
        })
    }

    /// Takes the counters; call once.
    pub fn take_counters(&mut self) -> Result<Counters, DatapathError> {
        Ok(Counters {
            map: take(&mut self.ebpf, maps::COUNTERS)?,
        })
    }

    /// Each loaded program's name, total run time and run count, as the kernel counts them
    /// while run-time statistics are on (`kernel.bpf_stats_enabled` or BPF_ENABLE_STATS).
    pub fn run_stats(&self) -> Result<Vec<(String, std::time::Duration, u64)>, DatapathError> {
        self.ebpf
            .programs()
            .map(|(name, program)| {
                let info = program.info().map_err(|source| DatapathError::Info {
                    name: name.to_owned(),
                    source,
                })?;
                Ok((name.to_owned(), info.run_time(), info.run_count()))
            })
            .collect()
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut CgroupSkb, DatapathError> {
        program(&mut self.ebpf)
    }
}

impl Drop for Datapath {
    /// Unpinned links die with the process anyway; pinned ones are only removed by an
    /// explicit [`Datapath::detach`], so that a crash or a panic never lifts enforcement.
    fn drop(&mut self) {
        self.keep_attached();
    }
}

/// Removes the pins of every other program version, which detaches its programs. Called
/// only once this version's programs are attached, so enforcement never pauses.
/// Loads the DNS answer reader's programs and puts each in its tail-call slot. With pinned
/// maps the slots may already hold an earlier agent's copies of the same programs; each is
/// replaced in one update, so answers are read throughout.
fn load_dns_reader(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let mut fds = Vec::with_capacity(dns_slots::PROGRAMS.len());
    for (name, slot) in dns_slots::PROGRAMS {
        let program: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing {
                kind: "program",
                name,
            })?
            .try_into()
            .map_err(|source| DatapathError::Verify { name, source })?;
        program
            .load()
            .map_err(|source| DatapathError::Verify { name, source })?;
        let fd = program
            .fd()
            .map_err(|source| DatapathError::Verify { name, source })?
            .try_clone()
            .map_err(|source| DatapathError::Verify {
                name,
                source: source.into(),
            })?;
        fds.push((slot, fd));
    }
    let fail = |source| DatapathError::Map {
        name: maps::DNS_PROGRAM,
        source,
    };
    let mut slots: ProgramArray<&mut MapData> = ebpf
        .map_mut(maps::DNS_PROGRAM)
        .ok_or(DatapathError::Missing {
            kind: "map",
            name: maps::DNS_PROGRAM,
        })?
        .try_into()
        .map_err(fail)?;
    // The later stages first: the first stage hands on to them as soon as it is in place.
    for (slot, fd) in fds.iter().rev() {
        slots.set(*slot, fd, 0).map_err(fail)?;
    }
    Ok(())
}

fn remove_other_versions(pins: &PinDir) -> Result<(), PinError> {
    for old in pins.other_versions() {
        tracing::info!(version = %old.display(), "removing the enforcement of another program version");
        pins::remove_version(&old)?;
    }
    Ok(())
}

/// The pinned links of this version, if every program has one.
fn adopt(pins: &PinDir) -> Option<Vec<AttachedLink>> {
    let mut links = Vec::with_capacity(PROGRAMS.len());
    for name in PROGRAMS {
        let path = pins.link(name);
        match PinnedLink::from_pin(&path) {
            Ok(link) => links.push(AttachedLink::Pinned { link, path }),
            Err(err) => {
                tracing::debug!(%err, program = name, "no pinned link to adopt");
                return None;
            }
        }
    }
    Some(links)
}

fn pin_link(
    pins: &PinDir,
    name: &'static str,
    link: FdLink,
) -> Result<AttachedLink, DatapathError> {
    let path = pins.link(name);
    // A stale pin of this version (some programs were pinned, not all): replace it.
    let _ = std::fs::remove_file(&path);
    let link = link.pin(&path).map_err(|err| DatapathError::PinLink {
        name,
        path: path.clone(),
        message: err.to_string(),
    })?;
    Ok(AttachedLink::Pinned { link, path })
}

fn program(ebpf: &mut Ebpf) -> Result<&mut CgroupSkb, DatapathError> {
    ebpf.program_mut(EGRESS_PROGRAM)
        .and_then(|program| program.try_into().ok())
        .ok_or(DatapathError::Missing {
            kind: "cgroup_skb program",
            name: EGRESS_PROGRAM,
        })
}

pub(crate) fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, DatapathError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DatapathError::Missing { kind: "map", name })?;
    M::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

/// What each rule decided, from the kernel's per-CPU counters.
pub struct RuleHitCounters {
    map: PerCpuArray<MapData, RuleHits>,
}

impl RuleHitCounters {
    /// The hits of rule `id`, summed over CPUs; the last hit is the latest on any CPU.
    pub fn read(&self, id: u32) -> Result<RuleHits, aya::maps::MapError> {
        let per_cpu = self.map.get(&id, 0)?;
        Ok(per_cpu.iter().fold(RuleHits::default(), |sum, hits| {
            let RuleHits {
                packets_allowed,
                packets_denied,
                connections_allowed,
                connections_denied,
                last_hit_ns,
            } = *hits;
            RuleHits {
                packets_allowed: sum.packets_allowed + packets_allowed,
                packets_denied: sum.packets_denied + packets_denied,
                connections_allowed: sum.connections_allowed + connections_allowed,
                connections_denied: sum.connections_denied + connections_denied,
                last_hit_ns: sum.last_hit_ns.max(last_hit_ns),
            }
        }))
    }
}

/// The kernel program's per-CPU counters, summed over CPUs.
pub struct Counters {
    map: PerCpuArray<MapData, u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterValues {
    pub packets_allowed: u64,
    pub packets_denied: u64,
    pub packets_audit_denied: u64,
    pub events_lost: u64,
    pub malformed: u64,
    pub calls_denied: u64,
    pub dns_answers: u64,
    pub dns_learned: u64,
    pub dns_dropped: u64,
    pub dns_unread: u64,
    pub dns_new: u64,
}

impl Counters {
    pub fn read(&self) -> Result<CounterValues, aya::maps::MapError> {
        let sum = |index: u32| -> Result<u64, aya::maps::MapError> {
            Ok(self.map.get(&index, 0)?.iter().sum())
        };
        Ok(CounterValues {
            packets_allowed: sum(counter::PACKETS_ALLOWED)?,
            packets_denied: sum(counter::PACKETS_DENIED)?,
            packets_audit_denied: sum(counter::PACKETS_AUDIT_DENIED)?,
            events_lost: sum(counter::EVENTS_LOST)?,
            malformed: sum(counter::MALFORMED)?,
            calls_denied: sum(counter::CALLS_DENIED)?,
            dns_answers: sum(counter::DNS_ANSWERS)?,
            dns_learned: sum(counter::DNS_LEARNED)?,
            dns_dropped: sum(counter::DNS_DROPPED)?,
            dns_unread: sum(counter::DNS_UNREAD)?,
            dns_new: sum(counter::DNS_NEW)?,
        })
    }
}

/// The kernel's learned addresses (read only: the kernel writes them).
pub struct LearnedAddresses {
    map: aya::maps::HashMap<MapData, LearnedKey, Learned>,
}

impl LearnedAddresses {
    /// Entries in the map, expired or not (an expired entry counts for nothing, and is
    /// replaced or evicted like any other).
    pub fn entries(&self) -> u64 {
        self.map.keys().filter(Result::is_ok).count() as u64
    }
}
