//! The daemon on its node: the agent loop, what it finds there (which
//! veth carries which pod, which veths look like pods') and the
//! capabilities it keeps after start.

pub mod agent;
pub mod capabilities;
pub mod discover;
pub mod link_watch;
