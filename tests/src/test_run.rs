//! The agent's programs loaded for `BPF_PROG_TEST_RUN` (never attached), with a generation
//! writer: the fixture of the kernel verdict suites (`verdicts`, `dns_kernel`).

use egress_agent::{
    cgroup::{Hierarchy, find_cgroup2_root},
    compile::{CgroupResolution, compile},
    datapath::{Applied, Datapath, GenerationWriter},
    policy::PolicySet,
};
use egress_common::RuntimeConfig;

use crate::{SerialGuard, serial};

/// The loaded programs, holding the suites' serial lock. Fields drop in order; the lock
/// goes last.
pub struct LoadedPrograms {
    pub datapath: Datapath,
    writer: GenerationWriter,
    hierarchy: Hierarchy,
    _serial: SerialGuard,
}

impl LoadedPrograms {
    /// Takes the serial lock and loads the programs; panics, saying what the tests need,
    /// where they cannot load.
    pub fn load() -> Self {
        let serial = serial();
        let mut datapath = Datapath::load().unwrap_or_else(|e| {
            panic!("these tests need root and BPF (BPF_PROG_TEST_RUN); loading failed: {e}")
        });
        let writer = datapath.generation_writer().expect("generation writer");
        let root = find_cgroup2_root().expect("cgroup2 mount");
        let hierarchy = Hierarchy::new(root).expect("cgroup2 hierarchy");
        Self {
            datapath,
            writer,
            hierarchy,
            _serial: serial,
        }
    }

    /// The generation in force, its parity and flags.
    pub fn active(&self) -> RuntimeConfig {
        self.writer.active()
    }

    /// Compiles `set` and switches the programs to it.
    pub fn apply(&mut self, set: &PolicySet) -> Applied {
        let compiled = compile(set, &CgroupResolution::default(), self.writer.next_parity())
            .expect("policy compiles");
        self.writer
            .apply(&compiled, &self.hierarchy)
            .expect("generation applies")
    }
}
