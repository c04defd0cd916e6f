//! The kernel-facing half of the syncer: typed access to the pinned
//! datapath maps, the one place where the compiler's desired state is
//! encoded in the ABI's keys (`policy_keys`, `pod_deny_key`, `addr_key`),
//! and the per-endpoint policy swap. The daemon writes through it from the
//! syncer alone.
//!
//! Atomicity: a packet reads its endpoint's `revision` once and looks up
//! policy entries of generation `revision & 1` only. A policy change writes
//! every entry of the next generation first (invisible to packets), then
//! flips the endpoint's revision in one map update, then deletes the old
//! generation's entries. A packet therefore sees the old policy or the new
//! one, never a mix. (The syncer patches a generation in place only for
//! identities that moved in its pass: `sync::endpoints`.)
//!
//! Tracked flows: the node-wide epoch (`PAL_EPOCH`) is bumped after every
//! flip and endpoint removal (by the swap and the removal themselves) and
//! after identity changes (by the syncer, once per pass). A tracked
//! flow passes on its conntrack entry alone only while the entry's epoch is
//! the current one; otherwise its next packet is judged again by the policy
//! in force, and the flow is cut if that now denies it. One array read per
//! packet buys established flows the skipping of the endpoint and policy
//! lookups.

pub mod address_map;
pub mod batch;
pub mod lsm;
pub mod maps;
pub mod node_addresses;
pub mod ports;
pub mod prefilter;
pub mod sources;

pub use maps::{DatapathError, DatapathMaps};
