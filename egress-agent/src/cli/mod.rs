//! Subcommands of `egress` other than `agent`.

pub mod check;
pub mod explain;
