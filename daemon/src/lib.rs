//! Palisade's node agent, as a library: the `palisade` binary (the `cli`
//! crate) and the lab (the `lab` crate) are built on it.
//!
//! Layout follows docs/DESIGN.md: `model` parses policies, `identity`
//! numbers label sets, `compile` turns a snapshot into the desired state,
//! `sync` alone writes it to the kernel, `datapath` encodes it in the maps'
//! keys, `loader` owns every kernel object Palisade creates, `source` feeds
//! snapshots, `node` runs the daemon on the node, `observe` reports what it
//! holds and does, `netns` enters network namespaces, and `paths` names
//! every file the daemon touches.

pub mod compile;
pub mod datapath;
pub mod identity;
pub mod loader;
pub mod model;
pub mod netns;
pub mod node;
pub mod observe;
pub mod paths;
pub mod source;
pub mod sync;
