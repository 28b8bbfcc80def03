#![no_std]
// This file exists so the agent can declare a build-dependency on this crate; see egress-agent/Cargo.toml.
