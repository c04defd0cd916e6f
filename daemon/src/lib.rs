//! Palisade's daemon and command-line tool.
//!
//! Layout follows DESIGN.md: `features` probes the kernel, `loader` owns
//! every kernel object Palisade creates, `stats` reads counters back, and
//! `paths` names every file the daemon touches. The policy model, compiler,
//! syncer, sources, metrics and lab arrive in their own modules.

pub mod agent;
pub mod client;
pub mod compile;
pub mod datapath;
pub mod discover;
pub mod events;
pub mod explain;
pub mod features;
pub mod http;
pub mod identity;
pub mod lab;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod names;
pub mod netns;
pub mod paths;
pub mod source;
pub mod stats;
pub mod status;
pub mod sync;
