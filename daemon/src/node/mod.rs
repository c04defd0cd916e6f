//! The daemon on its node: the agent loop and what it finds there (which
//! veth carries which pod, which veths look like pods').

pub mod agent;
pub mod discover;
