//! One daemon per node, every one of them fed the whole cluster, as a
//! DaemonSet's pods each read the whole API. With the file source each
//! daemon has a source directory of its own with the same files; with the
//! Kubernetes source every daemon reads the one test API server as its own
//! node (`--node-name`). A change is in force when every daemon says so.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    drops::DropWatch,
    enforcer::{DaemonArgs, Enforcer, Feed, write_file},
    kube_feed::KubeFeed,
    netns::Netns,
    nodes::Nodes,
};

pub struct Daemon {
    /// Its node's name.
    pub name: String,
    pub enforcer: Enforcer,
    /// Its node's namespace, where its endpoint listens.
    pub netns: Netns,
}

/// Fields drop in order: the daemons stop before their API server.
pub struct Daemons {
    daemons: Vec<Daemon>,
    /// With [`Feed::Kube`]: the API server they all read.
    feed: Option<KubeFeed>,
    /// With [`Feed::Kube`]: where the files a commit sends are written.
    staging: PathBuf,
    /// Name errors by node (the file declares `nodes:`).
    by_node: bool,
}

impl Daemons {
    /// A daemon on every node of `nodes`, each in a directory of its own
    /// below `dir` (the one node's is `dir` itself) with pins of its own;
    /// nothing written or committed yet.
    pub fn start(bin: &Path, nodes: &Nodes, feed: Feed, dir: &Path) -> anyhow::Result<Self> {
        let staging = dir.join("source");
        let kube = match feed {
            Feed::Kube => {
                fs::create_dir_all(&staging)?;
                let (netns, ip) = nodes.api_server_at()?;
                Some(KubeFeed::start_at(netns, ip, dir)?)
            }
            Feed::Files => None,
        };
        let mut daemons = Vec::new();
        for node in &nodes.nodes {
            let node_dir = if nodes.declared() {
                dir.join(&node.name)
            } else {
                dir.to_owned()
            };
            let pins = Path::new(palisade::paths::BPFFS).join(format!("palisade-{}", node.tag));
            let netns = &node.topology.node;
            let enforcer = match &kube {
                Some(feed) => Enforcer::start_shared(
                    bin,
                    netns,
                    &node_dir,
                    &pins,
                    DaemonArgs::default(),
                    feed.daemon_args_for(&node.name),
                ),
                None => Enforcer::start_with(bin, netns, &node_dir, &pins, DaemonArgs::default()),
            }
            .with_context(|| format!("starting the daemon of node {}", node.name))?;
            daemons.push(Daemon {
                name: node.name.clone(),
                enforcer,
                netns: netns.try_clone()?,
            });
        }
        Ok(Self {
            daemons,
            feed: kube,
            staging,
            by_node: nodes.declared(),
        })
    }

    pub fn daemons(&self) -> &[Daemon] {
        &self.daemons
    }

    /// To stop, kill and restart them (`palisade lab chaos`).
    pub fn daemons_mut(&mut self) -> &mut [Daemon] {
        &mut self.daemons
    }

    pub fn feed(&self) -> Option<&KubeFeed> {
        self.feed.as_ref()
    }

    /// With [`Feed::Kube`]: the API server's feed, for its faults.
    pub fn feed_mut(&mut self) -> Option<&mut KubeFeed> {
        self.feed.as_mut()
    }

    /// After the daemons were restarted: see [`KubeFeed::mark_restart`].
    pub fn restarted(&mut self) -> anyhow::Result<()> {
        match &mut self.feed {
            Some(feed) => feed.mark_restart(),
            None => Ok(()),
        }
    }

    /// Publishes what was written without waiting for it to be in force
    /// (a daemon is about to be killed under it).
    pub fn publish(&mut self) -> anyhow::Result<()> {
        match &mut self.feed {
            Some(feed) => feed.sync(&self.staging),
            None => self
                .daemons
                .iter_mut()
                .try_for_each(|d| d.enforcer.commit().map(drop)),
        }
    }

    /// Writes a source file for every daemon; nothing is in force before
    /// [`Daemons::commit`].
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        if self.feed.is_some() {
            return write_file(&self.staging, name, text);
        }
        self.daemons
            .iter()
            .try_for_each(|d| d.enforcer.write(name, text))
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        if self.feed.is_some() {
            return fs::remove_file(self.staging.join(name))
                .with_context(|| format!("removing {name}"));
        }
        self.daemons
            .iter()
            .try_for_each(|d| d.enforcer.remove(name))
    }

    /// Publishes what was written, then waits until every daemon reports
    /// it fully in force, all within `limit`.
    pub async fn commit(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut revisions = Vec::new();
        match &mut self.feed {
            Some(feed) => feed.sync(&self.staging)?,
            None => {
                for d in &mut self.daemons {
                    revisions.push(d.enforcer.commit()?);
                }
            }
        }
        for (i, d) in self.daemons.iter_mut().enumerate() {
            // Each is looked at once at least, however late.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(50));
            let waited = match &self.feed {
                Some(feed) => {
                    d.enforcer
                        .wait_until(left, "the last commit", |status| {
                            feed.seen(status, &d.name) && status["ready"] == true
                        })
                        .await
                }
                None => d.enforcer.wait(revisions[i], left).await,
            };
            if self.by_node {
                waited.with_context(|| format!("node {}", d.name))?;
            } else {
                waited?;
            }
        }
        Ok(())
    }

    /// Every daemon's drop events, as one collection; with `nodes:`, each
    /// names its node.
    pub fn watch_drops(&self) -> anyhow::Result<DropWatch> {
        let watch = DropWatch::default();
        for d in &self.daemons {
            let node = self.by_node.then(|| d.name.clone());
            watch.subscribe(d.enforcer.metrics_addr()?, &d.netns.path(), node)?;
        }
        Ok(watch)
    }

    /// Each daemon's metrics, by node name.
    pub fn scrape(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.daemons
            .iter()
            .map(|d| {
                let text = d
                    .enforcer
                    .scrape(&d.netns)
                    .with_context(|| format!("the metrics of node {}", d.name))?;
                Ok((d.name.clone(), text))
            })
            .collect()
    }

    /// Every daemon's metrics, one text after the other.
    pub fn scrape_all(&self) -> anyhow::Result<String> {
        Ok(self
            .scrape()?
            .into_iter()
            .map(|(_, text)| text)
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
