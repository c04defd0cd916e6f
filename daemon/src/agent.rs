//! `palisade daemon`: the reconcile loop of a node.
//!
//! One pass: read the source -> compile -> find each local pod's veth ->
//! attach the TC programs to new veths -> sync the maps by difference ->
//! detach from veths no pod holds -> publish the status. A pass runs on
//! every change of the source (inotify), and on a timer that repairs drift
//! and retries pods whose veth could not be resolved yet.
//!
//! Readiness: the status file (JSON, replaced atomically) names the source
//! revision the last pass applied and whether it is fully in force (every
//! local pod placed, no write failed). Callers wait for "revision N ready"
//! instead of sleeping.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use anyhow::Context as _;

use crate::{
    compile::incremental::Incremental,
    datapath::DatapathMaps,
    discover::{self, Unplaced},
    events::Hub,
    features::Features,
    http::SharedSnapshot,
    loader::{
        self, Loaded,
        attach::{self, TcHook},
        sizes::MapSizes,
    },
    metrics::Metrics,
    names::{Names, SharedNames},
    paths::PinDir,
    source::Source,
    sync,
};

pub struct Options {
    pub status_file: Option<PathBuf>,
    /// Full resync period (drift repair).
    pub resync: Duration,
    /// Quarantine veths that look like pods' (bridge ports, or these name
    /// prefixes) until their pod is known: such a veth drops everything
    /// but ARP/ND, so a new pod passes no traffic before its policy is in.
    pub quarantine: Option<Vec<String>>,
    /// Serve Prometheus metrics here (port 0: any free port; the status
    /// file names the one bound).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Per-pod metric labels for at most this many pods.
    pub metrics_pod_labels: Option<usize>,
    /// Interfaces for the XDP prefilter: it drops the `deny_cidrs` sources
    /// and connection attempts to this node's pods that an explicit deny
    /// refuses outright. Empty: no prefilter.
    pub uplinks: Vec<String>,
    pub deny_cidrs: Vec<ipnet::IpNet>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The source revision the last pass applied.
    pub revision: String,
    /// The revision is fully in force: every local pod enforced, no error.
    pub ready: bool,
    pub passes: u64,
    pub pass_ms: f64,
    /// `namespace/pod` -> host-side veth ifindex.
    pub endpoints: BTreeMap<String, u32>,
    /// Local pods whose veth is not resolved yet.
    pub unplaced: Vec<String>,
    /// Pod-like veths (ifindex) no known pod holds yet: they pass nothing.
    pub quarantined: Vec<u32>,
    pub policies: usize,
    /// Source errors (bad objects keep their last good version) and failed
    /// writes (the endpoint keeps its last good policy).
    pub errors: Vec<String>,
    /// Where the metrics endpoint listens, if it does.
    pub metrics: Option<String>,
}

pub struct Agent<S: Source> {
    source: S,
    pins: PinDir,
    loaded: Loaded,
    maps: DatapathMaps,
    features: Features,
    netlink: rtnetlink::Handle,
    attached: BTreeSet<u32>,
    status: Status,
    options: Options,
    metrics: Option<Arc<Metrics>>,
    names: SharedNames,
    /// What the last pass applied, for `/explain`.
    snapshot: SharedSnapshot,
    compiler: Option<Incremental>,
}

impl<S: Source> Agent<S> {
    /// Loads (or adopts) the programs and maps; must run inside a tokio
    /// runtime, in the node's network namespace.
    pub fn start(
        source: S,
        pins: PinDir,
        sizes: &MapSizes,
        options: Options,
    ) -> anyhow::Result<Self> {
        let features = Features::probe();
        for line in features.lines() {
            tracing::info!("{line}");
        }
        let mut loaded = loader::load_with(&pins, &features, sizes)?;
        let mut maps = DatapathMaps::open(&pins)?;
        sync::prefilter::set_deny_list(&mut maps, &options.deny_cidrs)?;
        for uplink in &options.uplinks {
            let ifindex =
                crate::netns::ifindex(uplink).with_context(|| format!("uplink {uplink}"))?;
            let state = attach::attach_xdp(
                &mut loaded.xdp,
                &pins,
                ifindex,
                aya::programs::XdpMode::default(),
            )
            .with_context(|| format!("XDP prefilter on {uplink}"))?;
            tracing::info!("XDP prefilter on {uplink}: {state:?}");
        }
        let netlink = discover::connect()?;
        let mut status = Status::default();
        let names = Names::shared();
        let snapshot: SharedSnapshot = Arc::default();
        let metrics = match options.metrics_addr {
            Some(addr) => {
                let m = Metrics::install(
                    pins.clone(),
                    &features,
                    options.metrics_pod_labels,
                    names.clone(),
                )?;
                let hub = match Hub::start(&pins, names.clone()) {
                    Ok(hub) => Some(hub),
                    Err(e) => {
                        tracing::warn!("no event stream: {e:#}");
                        None
                    }
                };
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("metrics endpoint on {addr}"))?;
                listener.set_nonblocking(true)?;
                let bound = listener.local_addr()?;
                tracing::info!("metrics on http://{bound}/metrics, events on /events");
                status.metrics = Some(bound.to_string());
                tokio::spawn(crate::http::serve(
                    tokio::net::TcpListener::from_std(listener)?,
                    crate::http::State {
                        metrics: m.clone(),
                        hub,
                        snapshot: snapshot.clone(),
                    },
                ));
                Some(m)
            }
            None => None,
        };
        Ok(Self {
            source,
            pins,
            loaded,
            maps,
            features,
            netlink,
            attached: BTreeSet::new(),
            status,
            options,
            metrics,
            names,
            snapshot,
            compiler: None,
        })
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// One reconcile pass.
    pub async fn reconcile(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let reading = self.source.read();
        // Label-only changes are recompiled incrementally.
        let compiler = match &mut self.compiler {
            Some(c) => {
                c.update(&reading.snapshot);
                c
            }
            None => self
                .compiler
                .insert(Incremental::new(reading.snapshot.clone())),
        };
        let compiled = compiler.compiled();
        let mut errors = reading.errors.clone();
        let mut attach_errors = Vec::new();

        let mut placed = BTreeMap::new();
        let mut unplaced = Vec::new();
        let mut tables = discover::Tables::new(&self.netlink);
        for pod in &reading.snapshot.pods {
            let Some(&ip) = pod.ips.first() else {
                continue;
            };
            match tables.locate(ip).await? {
                Ok(p) => {
                    placed.insert(pod.key(), p.veth());
                }
                Err(Unplaced::Unresolved { .. }) => {
                    discover::nudge(ip);
                    unplaced.push(pod.key());
                }
                // Not behind a local veth: another node's pod.
                Err(Unplaced::NoRoute | Unplaced::NotLocal { .. }) => {}
            }
        }

        let mut quarantined = Vec::new();
        if let Some(prefixes) = &self.options.quarantine {
            let known: BTreeSet<u32> = placed.values().copied().collect();
            for ifindex in tables.pod_veths(prefixes).await? {
                if !known.contains(&ifindex) {
                    quarantined.push(ifindex);
                }
            }
        }
        // Programs first, then policy: a veth is never enforced with a
        // half-written state, and an endpoint entry exists before traffic
        // can be judged against it.
        for &ifindex in placed.values().chain(&quarantined) {
            if self.attached.contains(&ifindex) {
                continue;
            }
            let mut ok = true;
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                if let Err(e) = attach::attach_tc(
                    &mut self.loaded.tc,
                    &self.pins,
                    ifindex,
                    hook,
                    self.features.tcx,
                ) {
                    attach_errors.push(format!("attaching to ifindex {ifindex}: {e}"));
                    ok = false;
                }
            }
            if ok {
                self.attached.insert(ifindex);
            }
        }
        let pod_denies = if self.options.uplinks.is_empty() {
            None
        } else {
            let want = sync::prefilter::pod_denies(compiled, &reading.snapshot, &placed)?;
            if let Err(e) = self.maps.retire_pod_denies(&want) {
                errors.push(format!("XDP prefilter: {e}"));
            }
            Some(want)
        };
        let report = sync::apply(&mut self.maps, compiled, &placed, &quarantined)?;
        if let Some(want) = &pod_denies
            && let Err(e) = self.maps.apply_pod_denies(want)
        {
            errors.push(format!("XDP prefilter: {e}"));
        }
        errors.extend(report.errors.iter().cloned());
        let held: BTreeSet<u32> = placed.values().chain(&quarantined).copied().collect();
        for ifindex in self.attached.clone() {
            if !held.contains(&ifindex) {
                if let Err(e) = attach::detach_tc(&self.pins, ifindex) {
                    attach_errors.push(e.to_string());
                }
                self.attached.remove(&ifindex);
            }
        }
        if report.changed() {
            tracing::info!(
                revision = %reading.revision,
                endpoints = ?report.endpoints_written,
                removed = ?report.endpoints_removed,
                identities = report.identities_written,
                "applied"
            );
        }
        errors.extend(attach_errors.iter().cloned());
        for e in &errors {
            tracing::warn!("{e}");
        }
        crate::names::lock(&self.names).learn(&compiled.policies, &report.endpoint_ids);
        if self.metrics.is_some() {
            let new = |list: &[String]| {
                list.iter()
                    .filter(|e| !self.status.errors.contains(e))
                    .count() as u64
            };
            metrics::counter!("palisade_errors_total", "kind" => "source")
                .increment(new(&reading.errors));
            metrics::counter!("palisade_errors_total", "kind" => "attach")
                .increment(new(&attach_errors));
            metrics::counter!("palisade_errors_total", "kind" => "write")
                .increment(new(&report.errors));
            metrics::gauge!("palisade_source_errors").set(reading.errors.len() as f64);
            metrics::gauge!("palisade_policies").set(reading.snapshot.policies.len() as f64);
            metrics::gauge!("palisade_quarantined_veths").set(quarantined.len() as f64);
            metrics::gauge!("palisade_endpoints").set(placed.len() as f64);
            metrics::histogram!("palisade_reconcile_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        let ready = unplaced.is_empty() && report.errors.is_empty();
        metrics::gauge!("palisade_ready").set(if ready { 1.0 } else { 0.0 });
        self.status = Status {
            revision: reading.revision,
            ready,
            passes: self.status.passes + 1,
            pass_ms: started.elapsed().as_secs_f64() * 1e3,
            endpoints: placed,
            unplaced,
            quarantined,
            policies: reading.snapshot.policies.len(),
            errors,
            metrics: self.status.metrics.clone(),
        };
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(reading.snapshot);
        if let Some(path) = &self.options.status_file {
            write_atomically(path, &serde_json::to_vec_pretty(&self.status)?)?;
        }
        Ok(())
    }

    /// Runs passes until Ctrl-C or SIGTERM: at once, on every change under
    /// `watch`, and every resync period (sooner while pods are unplaced).
    pub async fn run(mut self, watch: &Path) -> anyhow::Result<()> {
        let (tx, mut changes) = tokio::sync::mpsc::channel::<()>(1);
        let dir = watch.to_path_buf();
        std::thread::Builder::new()
            .name("palisade-watch".into())
            .spawn(move || watch_dir(&dir, &tx))?;
        let (link_tx, mut links) = tokio::sync::mpsc::channel::<()>(1);
        if self.options.quarantine.is_some()
            && let Err(e) = discover::watch_links(link_tx)
        {
            tracing::warn!("link events unavailable: new veths wait for the resync: {e}");
        }
        // When the oldest source change not yet in force was noticed.
        let mut pending: Option<Instant> = None;
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::error!("reconcile: {e:#}");
            }
            if self.status.ready
                && let Some(since) = pending.take()
            {
                metrics::histogram!("palisade_change_to_in_force_seconds")
                    .record(since.elapsed().as_secs_f64());
            }
            let wait = if self.status.unplaced.is_empty() {
                self.options.resync
            } else {
                Duration::from_millis(50)
            };
            // A watcher that is not running (inotify or link events
            // unavailable) has closed its channel: `None` disables the
            // branch instead of waking the loop at once, again and again.
            tokio::select! {
                Some(()) = changes.recv() => {
                    pending.get_or_insert_with(Instant::now);
                }
                Some(()) = links.recv() => {}
                () = tokio::time::sleep(wait) => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
            }
        }
        // Enforcement stays: pinned links and maps outlive the daemon.
        tracing::info!("stopping; programs and maps stay pinned and enforcing");
        Ok(())
    }
}

/// Forwards inotify events on `dir` as wake-ups; a burst of events is one.
fn watch_dir(dir: &Path, tx: &tokio::sync::mpsc::Sender<()>) {
    use inotify::{Inotify, WatchMask};
    let Ok(mut inotify) = Inotify::init() else {
        tracing::warn!("inotify unavailable: changes are picked up on resync only");
        return;
    };
    let mask = WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::CREATE;
    if let Err(e) = inotify.watches().add(dir, mask) {
        tracing::warn!("watching {}: {e}", dir.display());
        return;
    }
    let mut buffer = [0u8; 4096];
    loop {
        match inotify.read_events_blocking(&mut buffer) {
            Ok(_) => {
                // Full channel: a wake-up is already pending.
                let _ = tx.try_send(());
                if tx.is_closed() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("inotify: {e}");
                return;
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
