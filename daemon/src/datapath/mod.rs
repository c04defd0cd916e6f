//! The kernel-facing half of the syncer: typed access to the pinned
//! datapath maps, and the per-endpoint policy swap.
//!
//! Atomicity: a packet reads its endpoint's `revision` once and looks up
//! policy entries of generation `revision & 1` only. A policy change writes
//! every entry of the next generation first (invisible to packets), then
//! flips the endpoint's revision in one map update, then deletes the old
//! generation's entries. A packet therefore sees the old policy or the new
//! one, never a mix, and flows tracked under the old revision are checked
//! again at their next packet.

pub mod maps;
pub mod ports;

pub use maps::{DatapathError, DatapathMaps, PolicyEntry};
