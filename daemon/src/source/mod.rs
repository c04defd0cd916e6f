//! Where the daemon's snapshot of namespaces, pods and policies comes from.
//! Sources differ only in that: everything downstream (compile, sync) is
//! the same code. Here: a directory of YAML files (`files`), used by the lab
//! and for standalone nodes; the Kubernetes API source plugs in beside it.

pub mod files;
pub mod kube;

use crate::model::Snapshot;

/// One reading of a source.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub snapshot: Snapshot,
    /// Identifies this version of the source's contents; the daemon reports
    /// the revision it has put in force.
    pub revision: String,
    /// Objects that failed to parse or validate, with file, line and field.
    /// Their last good version (if any) is in the snapshot instead.
    pub errors: Vec<String>,
}

pub trait Source {
    /// The current contents. Never fails as a whole: what cannot be read is
    /// reported in `errors` and its last good state kept.
    fn read(&mut self) -> Reading;
}
