//! Where the daemon's snapshot of namespaces, pods and policies comes from.
//! Sources differ only in that: everything downstream (compile, sync) is
//! the same code. Here: a directory of YAML files (`files`), used by the lab
//! and for standalone nodes, and the Kubernetes API (`kube`), through
//! reflectors. Both read pods and namespaces as the API's own types
//! (`objects`).

mod dir_events;
pub mod files;
pub mod kube;
pub mod objects;

use std::collections::BTreeMap;

use crate::model::Snapshot;

/// One reading of a source.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub snapshot: std::sync::Arc<Snapshot>,
    /// Identifies this version of the source's contents; the daemon reports
    /// the revision it has put in force.
    pub revision: String,
    /// Objects that failed to parse or validate, with where and the field.
    /// Their last good version (if any) is in the snapshot instead.
    pub errors: Vec<String>,
    /// Set while the source has not yet seen all of its objects once (the
    /// Kubernetes source before every watch has listed): the snapshot is
    /// partial and must not be applied, whatever is pinned keeps enforcing.
    pub waiting: Option<String>,
    /// Set while the source cannot reach where its objects come from (the
    /// API server is down, the credentials expired): the snapshot is the
    /// last one seen, and stays in force.
    pub stale: Option<String>,
    /// By resource (`pods`, `namespaces`...): the newest resourceVersion
    /// seen in its watch, for a caller that wrote at that version and waits
    /// for the daemon to have seen it. Empty for the file source.
    pub observed: BTreeMap<String, u64>,
    /// Node-level source denies for the prefilter, when the source carries
    /// node settings (the Kubernetes source's ConfigMap); added to the
    /// `--deny-cidr` flags.
    pub node_denies: Option<Vec<ipnet::IpNet>>,
}

pub trait Source {
    /// The current contents. Never fails as a whole: what cannot be read is
    /// reported in `errors` and its last good state kept.
    fn read(&mut self) -> Reading;

    /// Wake-ups: one message (or a burst coalesced into one) whenever the
    /// contents may have changed. A closed channel means the source cannot
    /// tell, and the agent falls back on its resync timer.
    fn changes(&mut self) -> tokio::sync::mpsc::Receiver<()>;
}
