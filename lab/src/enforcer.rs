//! The real daemon, as a separate process in the lab's node namespace: the
//! same binary and code path as on a node. The lab writes the cluster into
//! a source directory (files first, then the revision) and waits until the
//! daemon reports that revision in force. With [`Feed::Kube`] the daemon
//! reads the Kubernetes source instead, and each commit becomes writes to
//! the test API server (`kube_feed`). A daemon may also read a source it
//! shares with others ([`Enforcer::start_shared`]: each node's of a lab
//! with several), which its caller feeds and judges.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use palisade::source::files::REVISION_FILE;

use crate::{dir_watch::DirWatch, kube_feed::KubeFeed, netns::Netns};

pub struct Enforcer {
    child: Child,
    dir: PathBuf,
    pins: PathBuf,
    args: DaemonArgs,
    revision: u64,
    /// With [`Feed::Kube`]: the API server and what it was sent.
    kube: Option<KubeFeed>,
    /// Its source arguments, as it was started with them.
    source_args: Vec<String>,
}

/// Where the daemon reads the cluster from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Feed {
    /// A directory of YAML files (the file source).
    #[default]
    Files,
    /// The Kubernetes source, from the lab's test API server.
    Kube,
}

/// How the daemon runs besides its source, status file and pins.
#[derive(Clone, Debug)]
pub struct DaemonArgs {
    /// `--resync-ms`: the drift repair period.
    pub resync_ms: u64,
    /// More `palisade daemon` arguments (`--uplink`, `--deny-cidr`...).
    pub extra: Vec<String>,
    pub feed: Feed,
}

impl Default for DaemonArgs {
    fn default() -> Self {
        Self {
            resync_ms: 1000,
            extra: Vec::new(),
            feed: Feed::Files,
        }
    }
}

/// Starts `palisade daemon` in the node namespace, on `source` (its source
/// arguments); it dies with the runner.
fn spawn(
    bin: &Path,
    node: &Netns,
    dir: &Path,
    pins: &Path,
    args: &DaemonArgs,
    source: &[String],
) -> anyhow::Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--pin-base")
        .arg(pins)
        .args(["daemon", "--metrics-addr", "127.0.0.1:0", "--resync-ms"])
        .arg(args.resync_ms.to_string())
        .args(source)
        .arg("--status-file")
        .arg(dir.join("status.json"))
        .args(&args.extra)
        .env(
            "PALISADE_LOG",
            std::env::var("PALISADE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    node.spawn_inside(&mut cmd)?;
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Replaces file `name` of directory `dir` atomically: a watcher of the
/// directory never sees half of it.
pub fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Waits until the status file in `dir` satisfies `in_force`, or the
/// daemon exits, or `limit` passes; `what` names the awaited state.
async fn poll(
    child: &mut Child,
    dir: &Path,
    limit: Duration,
    what: &str,
    in_force: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut last = String::new();
    // Set before the first read: a write after it wakes the loop.
    let mut watch = DirWatch::new(dir);
    while start.elapsed() < limit {
        // Parsed only when the daemon wrote another.
        if let Ok(text) = fs::read_to_string(dir.join("status.json"))
            && text != last
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && in_force(&v)
            {
                return Ok(start.elapsed().as_secs_f64());
            }
            last = text;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the daemon exited ({status}) before {what} was in force:\n{}",
                log_tail(dir)
            );
        }
        // Woken by the status file's replacement, so the figures carry no
        // polling grain; the timeout only paces the look at the process.
        let left = limit.saturating_sub(start.elapsed());
        watch.changed(Duration::from_millis(50).min(left)).await;
    }
    bail!(
        "the daemon did not report {what} in force within {limit:?}; last status: {last}\n{}",
        log_tail(dir)
    )
}

fn log_tail(dir: &Path) -> String {
    let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    format!("daemon log ({}):\n{tail}", dir.join("daemon.log").display())
}

fn stop(child: &mut Child) {
    // SIGTERM lets it leave cleanly.
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Enforcer {
    /// `dir` holds the source, the status file and the daemon's log.
    pub fn start(bin: &Path, node: &Netns, dir: &Path, pins: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, node, dir, pins, DaemonArgs::default())
    }

    /// [`Enforcer::start`] with other daemon arguments.
    pub fn start_with(
        bin: &Path,
        node: &Netns,
        dir: &Path,
        pins: &Path,
        args: DaemonArgs,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir.join("source"))?;
        let kube = match args.feed {
            Feed::Kube => Some(KubeFeed::start(node, dir)?),
            Feed::Files => None,
        };
        let source = match &kube {
            Some(feed) => feed.daemon_args(),
            None => vec!["--source".into(), dir.join("source").display().to_string()],
        };
        Self::launch(bin, node, dir, pins, args, source, kube)
    }

    /// A daemon on a source it shares with other daemons: `source` are its
    /// source arguments (such as [`KubeFeed::daemon_args_for`]). Its caller
    /// writes that source and waits with [`Enforcer::wait_until`]; `dir`
    /// holds only the status file and the log.
    pub fn start_shared(
        bin: &Path,
        node: &Netns,
        dir: &Path,
        pins: &Path,
        args: DaemonArgs,
        source: Vec<String>,
    ) -> anyhow::Result<Self> {
        Self::launch(bin, node, dir, pins, args, source, None)
    }

    fn launch(
        bin: &Path,
        node: &Netns,
        dir: &Path,
        pins: &Path,
        args: DaemonArgs,
        source: Vec<String>,
        kube: Option<KubeFeed>,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let _ = fs::remove_file(dir.join("daemon.log"));
        Ok(Self {
            child: spawn(bin, node, dir, pins, &args, &source)?,
            dir: dir.to_owned(),
            pins: pins.to_owned(),
            args,
            revision: 0,
            kube,
            source_args: source,
        })
    }

    /// Stops the daemon; what it enforced stays pinned.
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Stops the daemon (enforcement stays pinned) and starts a new one on
    /// the same pins and source, as an upgrade would; wait for the current
    /// revision afterwards.
    pub fn restart(&mut self, bin: &Path, node: &Netns) -> anyhow::Result<()> {
        stop(&mut self.child);
        let _ = fs::remove_file(self.dir.join("status.json"));
        self.child = spawn(
            bin,
            node,
            &self.dir,
            &self.pins,
            &self.args,
            &self.source_args,
        )?;
        Ok(())
    }

    /// [`Self::restart`] with other extra arguments from now on.
    pub fn restart_with(
        &mut self,
        bin: &Path,
        node: &Netns,
        extra: Vec<String>,
    ) -> anyhow::Result<()> {
        self.args.extra = extra;
        self.restart(bin, node)
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn source(&self) -> PathBuf {
        self.dir.join("source")
    }

    /// The directory the file source reads (written in place by faults
    /// that must not be atomic).
    pub fn source_dir(&self) -> PathBuf {
        self.source()
    }

    /// The base of its pins (the ABI directories are beneath).
    pub fn pins(&self) -> &Path {
        &self.pins
    }

    /// Replaces a source file atomically (the watcher never sees half).
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        write_file(&self.source(), name, text)
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        fs::remove_file(self.source().join(name)).with_context(|| format!("removing {name}"))
    }

    /// Publishes the files written so far as the next revision (with the
    /// Kubernetes feed: writes them to the API server).
    pub fn commit(&mut self) -> anyhow::Result<u64> {
        self.revision += 1;
        self.write(REVISION_FILE, &self.revision.to_string())?;
        let source = self.source();
        if let Some(feed) = &mut self.kube {
            feed.sync(&source)?;
        }
        Ok(self.revision)
    }

    /// The test API server, with the Kubernetes feed.
    pub fn kube(&self) -> Option<&KubeFeed> {
        self.kube.as_ref()
    }

    pub fn kube_mut(&mut self) -> Option<&mut KubeFeed> {
        self.kube.as_mut()
    }

    /// The status says `revision` (or, with the Kubernetes feed, every
    /// write of the last commit) fully in force.
    fn in_force(kube: Option<&KubeFeed>, status: &serde_json::Value, revision: &str) -> bool {
        let seen = match kube {
            Some(feed) => feed.seen(status, crate::kube_feed::NODE_NAME),
            None => status["revision"] == revision,
        };
        seen && status["ready"] == true
    }

    /// Waits until the daemon reports `revision` fully in force.
    pub async fn wait(&mut self, revision: u64, limit: Duration) -> anyhow::Result<f64> {
        let wanted = revision.to_string();
        let kube = self.kube.as_ref();
        poll(
            &mut self.child,
            &self.dir,
            limit,
            &format!("revision {revision}"),
            |status| Self::in_force(kube, status, &wanted),
        )
        .await
    }

    /// Waits until the daemon's status satisfies `in_force` (for a daemon
    /// on a shared source, whose feeder knows what to look for); `what`
    /// names that state in errors.
    pub async fn wait_until(
        &mut self,
        limit: Duration,
        what: &str,
        in_force: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<f64> {
        poll(&mut self.child, &self.dir, limit, what, in_force).await
    }

    /// The daemon's status file as it stands.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.dir.join("status.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The daemon's metrics endpoint, scraped from inside the node
    /// namespace (it listens on the node's loopback).
    pub fn scrape(&self, node: &Netns) -> anyhow::Result<String> {
        node.http_get(self.metrics_addr()?, "/metrics")
    }

    /// Where the daemon serves metrics and events, as its status says.
    pub fn metrics_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.status()?["metrics"]
            .as_str()
            .context("the daemon serves no metrics")?
            .parse()?)
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        stop(&mut self.child);
        // Pinned links and maps would keep programs alive: remove them all.
        let _ = fs::remove_dir_all(&self.pins);
    }
}
