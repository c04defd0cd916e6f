//! The kernel-facing half of the syncer: typed access to the pinned
//! datapath maps, and the per-endpoint policy swap.
//!
//! Atomicity: a packet reads its endpoint's `revision` once and looks up
//! policy entries of generation `revision & 1` only. A policy change writes
//! every entry of the next generation first (invisible to packets), then
//! flips the endpoint's revision in one map update, then deletes the old
//! generation's entries. A packet therefore sees the old policy or the new
//! one, never a mix.
//!
//! Tracked flows: after the flip (and after identity changes, endpoint
//! removals) the syncer bumps the node-wide epoch (`PAL_EPOCH`). A tracked
//! flow passes on its conntrack entry alone only while the entry's epoch is
//! the current one; otherwise its next packet is judged again by the policy
//! in force, and the flow is cut if that now denies it. One array read per
//! packet buys established flows the skipping of the endpoint and policy
//! lookups.

pub mod maps;
pub mod ports;
pub mod prefilter;

pub use maps::{DatapathError, DatapathMaps, PolicyEntry};
