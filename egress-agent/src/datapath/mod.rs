//! The kernel side as the agent sees it: loading the program, attaching it at the cgroup2
//! root, writing compiled policy generations into its maps, and reading its counters.

pub mod generation;
pub mod test_run;

use std::{fs::File, path::PathBuf};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, cgroup_skb::CgroupSkbLinkId,
    },
};
use egress_common::{EGRESS_PROGRAM, counter, maps};
pub use generation::{Applied, GenerationWriter};

/// The compiled kernel object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress"));

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
    #[error("loading program {EGRESS_PROGRAM} into the kernel (verifier) failed: {0}")]
    Verify(#[source] ProgramError),
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching to cgroup {path} failed: {source}")]
    Attach {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
}

/// The loaded program and its maps.
pub struct Datapath {
    ebpf: Ebpf,
    attached: Option<(PathBuf, CgroupSkbLinkId)>,
}

impl Datapath {
    /// Loads the program and creates its maps, without attaching it anywhere.
    pub fn load() -> Result<Self, DatapathError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(DatapathError::Load)?;
        program(&mut ebpf)?.load().map_err(DatapathError::Verify)?;
        Ok(Self {
            ebpf,
            attached: None,
        })
    }

    /// Attaches the program to the egress hook of the cgroup at `cgroup` (the cgroup2 root,
    /// so that every process on the host, including cgroups created later, is covered).
    pub fn attach(&mut self, cgroup: PathBuf) -> Result<(), DatapathError> {
        let file = File::open(&cgroup).map_err(|source| DatapathError::OpenCgroup {
            path: cgroup.clone(),
            source,
        })?;
        // `Single`: aya 0.14 turns `AllowMultiple` into a link flag that the kernel rejects
        // with EINVAL, and links on a cgroup coexist with other programs anyway.
        let link = program(&mut self.ebpf)?
            .attach(file, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(|source| DatapathError::Attach {
                path: cgroup.clone(),
                source,
            })?;
        self.attached = Some((cgroup, link));
        Ok(())
    }

    /// Detaches the program; enforcement stops.
    pub fn detach(&mut self) -> Result<(), ProgramError> {
        if let Some((_, link)) = self.attached.take() {
            program(&mut self.ebpf)
                .map_err(|_| ProgramError::NotLoaded)?
                .detach(link)?;
        }
        Ok(())
    }

    pub fn attached_to(&self) -> Option<&PathBuf> {
        self.attached.as_ref().map(|(path, _)| path)
    }

    /// Takes the maps a generation writer needs; call once.
    pub fn generation_writer(&mut self) -> Result<GenerationWriter, DatapathError> {
        GenerationWriter::new(&mut self.ebpf)
    }

    /// Takes the event ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        take(&mut self.ebpf, maps::EVENTS)
    }

    /// Takes the counters; call once.
    pub fn take_counters(&mut self) -> Result<Counters, DatapathError> {
        Ok(Counters {
            map: take(&mut self.ebpf, maps::COUNTERS)?,
        })
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut CgroupSkb, DatapathError> {
        program(&mut self.ebpf)
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::warn!(%err, "detaching the egress program failed");
        }
    }
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
        })
    }
}
