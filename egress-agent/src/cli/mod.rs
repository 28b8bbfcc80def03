//! Subcommands of `egress` other than `agent`.

pub mod apply;
pub mod check;
pub mod events;
pub mod explain;
pub mod rules;
pub mod status;
pub mod uninstall;
