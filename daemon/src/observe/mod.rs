//! What Palisade reports: Prometheus metrics, drop and audit events, the
//! HTTP endpoint that serves both with `/explain`, the counters read back
//! from pinned maps, the kernel's own count of LSM runs it skipped, and the
//! names that label them.

pub mod client;
pub mod events;
pub mod explain;
pub mod explain_lsm;
pub mod http;
pub mod metrics;
pub mod names;
pub mod programs;
pub mod stats;
