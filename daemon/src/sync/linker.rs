//! The attach thread: a fresh veth's two TCX links, made off the reconcile
//! loop.
//!
//! A TCX link waits out an RCU grace period under the routing lock before
//! it returns (`tcx_entry_sync`, about 12 ms a link here). Made in the pass
//! that finds a new pod's veth, the two held the loop, and the pod's Pod,
//! arriving meanwhile, waited for them before its own pass could begin.
//! Here they are made in order on one thread of their own (the routing
//! lock would serialise them anyway), from duplicates of the programs'
//! descriptors, and pinned there; a veth whose second link fails loses
//! its first, and is attached in the passes from then on. A pass hands a
//! new veth over once it has read the node's tables, before it compiles
//! (`Syncer::link_ahead`): handed over before those reads, the links made
//! the reads wait (measured, not traced to a lock). The pass goes on: it
//! writes the veth's entries (its pod's policy, or the quarantine),
//! and reports the veth's endpoints not in force until its links are in
//! place. A link made before the entries are written judges the veth's
//! packets as those of a veth without an endpoint, which it passes, as no
//! program at all would; only the pass after both claims enforcement.
//! When a veth's links are made, the thread wakes the loop, which runs a
//! pass that says so.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{Receiver, Sender, channel},
    },
};

use crate::loader::attach::{self, TcHook};

/// One veth's links to make: per hook, the program and the pin's path.
struct Job {
    ifindex: u32,
    hooks: Vec<(TcHook, OwnedFd, PathBuf)>,
}

/// A veth, and how its links turned out.
pub(super) type Made = (u32, LinkEnd);

/// How links made off the loop turned out.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// In place and pinned.
    Linked,
    /// The veth went away first (its pod deleted right after its sandbox
    /// was made): nothing of it is left to detach, and nothing failed.
    VethGone,
    Failed(String),
}

impl LinkEnd {
    /// What `result`, linking `ifindex`, means: a failure on a veth that
    /// no longer exists is its going away.
    pub(super) fn of(ifindex: u32, result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Self::Linked,
            Err(_) if crate::netns::ifname(ifindex).is_err() => Self::VethGone,
            Err(e) => Self::Failed(e),
        }
    }
}

pub(super) struct Linker {
    jobs: Sender<Job>,
    done: Receiver<Made>,
    /// Veths whose links are being made.
    pending: BTreeSet<u32>,
}

impl Linker {
    /// Starts the thread; `ended` is told of each veth's links made.
    pub(super) fn start(ended: Arc<tokio::sync::Notify>) -> std::io::Result<Self> {
        let (jobs, todo) = channel::<Job>();
        let (made, done) = channel();
        std::thread::Builder::new()
            .name("tcx-linker".into())
            .spawn(move || {
                for job in todo {
                    let began = std::time::Instant::now();
                    let mut pinned = Vec::new();
                    let result = job.hooks.iter().try_for_each(|(hook, prog, path)| {
                        attach::link_and_pin(prog.as_fd(), job.ifindex, *hook, path)
                            .map(|()| pinned.push(path))
                            .map_err(|e| format!("attaching to ifindex {}: {e}", job.ifindex))
                    });
                    if result.is_err() {
                        // Half a veth's links help no one, and might outlive
                        // a veth nothing holds: the link goes with its pin.
                        for path in pinned {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                    let end = LinkEnd::of(job.ifindex, result);
                    tracing::debug!(
                        ifindex = job.ifindex,
                        ms = began.elapsed().as_secs_f64() * 1e3,
                        ?end,
                        "links made"
                    );
                    if made.send((job.ifindex, end)).is_err() {
                        break;
                    }
                    ended.notify_one();
                }
            })?;
        Ok(Self {
            jobs,
            done,
            pending: BTreeSet::new(),
        })
    }

    /// Queues the links of `ifindex`.
    pub(super) fn submit(
        &mut self,
        ifindex: u32,
        hooks: Vec<(TcHook, OwnedFd, PathBuf)>,
    ) -> Result<(), String> {
        self.jobs
            .send(Job { ifindex, hooks })
            .map_err(|_| "the TCX linker thread has stopped".to_owned())?;
        self.pending.insert(ifindex);
        Ok(())
    }

    pub(super) fn any_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The veths whose links were made (or failed) since the last call. A
    /// thread that stopped fails every veth still pending.
    pub(super) fn collect(&mut self) -> Vec<Made> {
        let mut out = Vec::new();
        loop {
            match self.done.try_recv() {
                Ok(made) => {
                    self.pending.remove(&made.0);
                    out.push(made);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    out.extend(std::mem::take(&mut self.pending).into_iter().map(|i| {
                        (
                            i,
                            LinkEnd::Failed(format!(
                                "attaching to ifindex {i}: the TCX linker thread stopped"
                            )),
                        )
                    }));
                    break;
                }
            }
        }
        out
    }
}
