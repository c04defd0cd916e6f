//! The node agent's reconcile loop (what `palisade daemon` runs).
//!
//! One pass: read the source -> compile -> find each local pod's veth and
//! the veths to quarantine -> hand the desired state to the syncer, which
//! writes it (attachments, maps, prefilter, in its own order) -> publish
//! the status. The agent observes and reports; it writes no kernel state.
//! A pass runs on every change of the source (inotify), and on a timer that
//! repairs drift and retries pods whose veth could not be resolved yet.
//!
//! Readiness: the status file (JSON, replaced atomically) names the source
//! revision the last pass applied and whether it is fully in force (every
//! local pod placed and enforced, no write failed). Callers wait for
//! "revision N ready" instead of sleeping.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use anyhow::Context as _;

use crate::{
    compile::{
        Compiled,
        desired::{Desired, Sources, placed_pods},
        incremental::Incremental,
        lsm::{LsmDesired, compile_lsm, lsm_inactive},
    },
    loader::sizes::MapSizes,
    model::{FastMap, FastSet, Pod, Snapshot, pod_object},
    node::{
        capabilities::{self, Capabilities},
        discover::{self, Given, Unplaced},
        link_watch::LinkWatch,
    },
    observe::{
        events::Hub,
        http::{SharedReadiness, SharedSnapshot},
        metrics::Metrics,
        names::{Names, SharedNames},
        programs::LsmPrograms,
    },
    paths::PinDir,
    source::{Reading, Source},
    sync::{NextMove, Report, Syncer, TcAttach},
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
    /// Serve everything, `/events` and `/explain` included, here (a
    /// loopback address); the metrics endpoint serves those only when it
    /// is on loopback itself.
    pub api_addr: Option<std::net::SocketAddr>,
    /// Per-pod metric labels for at most this many pods.
    pub metrics_pod_labels: Option<usize>,
    /// Interfaces for the XDP prefilter: it drops the `deny_cidrs` sources
    /// and connection attempts to this node's pods that an explicit deny
    /// refuses outright. Empty: no prefilter.
    pub uplinks: Vec<String>,
    /// `Some(fixed)`: keep the prefilter on the interfaces of the node's
    /// default routes as they change (`--uplink auto`), and on `fixed`.
    pub follow_default_routes: Option<Vec<String>>,
    pub deny_cidrs: Vec<ipnet::IpNet>,
    /// Where the kernel has TCX: give a new veth clsact filters, which
    /// attach at once, and move it to TCX links when idle, instead of TCX
    /// links at once (an RCU grace period each). The filter helper adds
    /// and removes them (`loader::filter_helper`), so this process keeps
    /// no capability for them. On by default; off with `--tc-links-only`.
    pub tc_filters_first: bool,
    /// With `tc_filters_first`: how long the daemon waits with nothing to
    /// do before it moves a veth from filters to links.
    pub tc_move_when_idle: Duration,
    /// Honour a Pod's `palisade.dev/source-check: "off"` and its
    /// `palisade.dev/source-prefixes`. Off by default:
    /// whoever may write a Pod could otherwise send from its neighbours'
    /// addresses.
    pub allow_source_check_opt_out: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The source revision the last pass applied.
    pub revision: String,
    /// The revision is fully in force: every local pod placed and enforced,
    /// no endpoint's attach and no map write failed. (A source error is
    /// listed under `errors` but leaves the object's last good version in
    /// force; so is a prefilter that is on no uplink, which leaves every
    /// pod's policy in force.)
    pub ready: bool,
    pub passes: u64,
    pub pass_ms: f64,
    /// Where the last pass's time went, in ms: reading the source,
    /// locating the pods' veths, compiling, the syncer's map writes, the
    /// rest (the node's uplinks and addresses, handing new veths to the
    /// attach thread, process and file rules, metrics); the status write
    /// is not in.
    pub pass_phases_ms: Phases,
    /// `namespace/pod` -> host-side veth ifindex.
    pub endpoints: BTreeMap<String, u32>,
    /// Local pods whose veth is not resolved yet.
    pub unplaced: Vec<String>,
    /// Endpoints (local pods, quarantined veths) whose programs could not
    /// be attached, or whose TCX links are still being made, with the
    /// reason: nothing enforces their policy yet.
    pub not_enforced: BTreeMap<String, String>,
    /// Pod-like veths (ifindex) no known pod holds yet: they pass nothing.
    /// Listed once that is enforced.
    pub quarantined: Vec<u32>,
    /// Veths (ifindex) whose TC programs are clsact filters: all of them on
    /// a kernel without TCX; on one with TCX, new veths, which get filters
    /// because filters attach at once, until the idle daemon moves them to
    /// pinned TCX links. Enforced either way.
    pub tc_filters: Vec<u32>,
    /// Process and file rules: `enforcing`, or `inactive (why)`; where the
    /// kernel skipped runs of the programs, `enforcing` says so.
    pub lsm: String,
    /// Runs of each LSM program the kernel skipped since it loaded (its
    /// recursion guard: an operation that passed unjudged), by program;
    /// only programs with any. See `observe::programs`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lsm_runs_skipped: BTreeMap<String, u64>,
    /// Policies with process or file rules this node does not enforce (in
    /// whole or in part), each with the reasons. `ready` speaks for what
    /// the node can enforce; these it cannot, and says so here, in the
    /// log and in `palisade_policy_not_enforced`.
    pub policies_not_enforced: BTreeMap<String, Vec<String>>,
    /// Local pods with process or file rules, by `namespace/pod`: `in
    /// force`, or why not.
    pub lsm_pods: BTreeMap<String, String>,
    /// Local pods in force whose packets' sources are not checked (opted
    /// out, or no address known), by `namespace/pod`, with why (see
    /// `compile::desired::Sources::unchecked`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sources_unchecked: BTreeMap<String, String>,
    /// Local pods in force that may send from prefixes besides their own
    /// addresses, by `namespace/pod` (`palisade.dev/source-prefixes`, see
    /// `compile::desired::Sources::prefixes`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_prefixes: BTreeMap<String, Vec<String>>,
    pub policies: usize,
    /// Source errors (bad objects keep their last good version) and failed
    /// writes (the endpoint keeps its last good policy).
    pub errors: Vec<String>,
    /// Where the metrics endpoint listens, if it does.
    pub metrics: Option<String>,
    /// Where the loopback endpoint (everything, `/events` and `/explain`
    /// included) listens, if it does.
    pub api: Option<String>,
    /// The source: `in sync`; `waiting for ... (the state pinned by the
    /// last run keeps enforcing)` before it has seen everything once;
    /// `stale: ...` while it cannot reach its origin (the last good state
    /// stays in force).
    pub source: String,
    /// By resource: the newest resourceVersion the Kubernetes source has
    /// seen (what a writer waits for). Empty for the file source.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub observed: BTreeMap<String, u64>,
    /// What the daemon kept after start, and what it dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// The child that adds and removes clsact filters for the daemon
    /// (`loader::filter_helper`), while it works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tc_filter_helper: Option<FilterHelperStatus>,
}

/// The TC filter helper as the status shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FilterHelperStatus {
    pub pid: u32,
    /// What it holds (effective or permitted), as read from
    /// `/proc/<pid>/status` once it had started.
    pub capabilities: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Phases {
    pub read: f64,
    pub locate: f64,
    pub compile: f64,
    pub sync: f64,
    pub other: f64,
}

/// How long a veth waits on filters before it is moved at the daemon's
/// first idle moment of [`DUE_IDLE`] rather than of `tc_move_when_idle`;
/// also how long after a failed move it is tried again.
const MOVE_AT_LATEST: Duration = Duration::from_secs(30);

/// The idle moment a veth that has waited [`MOVE_AT_LATEST`] is moved in.
/// A move holds the loop about 24 ms: right after a pass, it met the next
/// change more often than not (a cluster's changes come in bursts, like
/// a sandbox's veth and then its Pod).
const DUE_IDLE: Duration = Duration::from_millis(20);

/// How long a veth waits on filters before it is moved right after the
/// next pass, whatever the churn: the bound for a daemon never idle.
const MOVE_OVERDUE: Duration = Duration::from_secs(60);

/// Milliseconds since `t`, and restarts it.
fn lap(t: &mut Instant) -> f64 {
    let ms = t.elapsed().as_secs_f64() * 1e3;
    *t = Instant::now();
    ms
}

pub struct Agent<S: Source> {
    source: S,
    syncer: Syncer,
    netlink: rtnetlink::Handle,
    status: Status,
    options: Options,
    metrics: Option<Arc<Metrics>>,
    names: SharedNames,
    /// What the last pass applied, for `/explain`.
    snapshot: SharedSnapshot,
    compiler: Option<Incremental>,
    /// For `/readyz`.
    not_ready: SharedReadiness,
    /// The last pass's placements (pod -> its address and veth).
    placed_before: BTreeMap<String, (IpAddr, u32, Option<[u8; 6]>)>,
    /// The pod-like veths the last pass quarantined, enforced or not yet
    /// (the status lists only the enforced).
    quarantined_before: Vec<u32>,
    /// The last pass's pod addresses behind no local veth.
    remote_before: FastSet<IpAddr>,
    /// The last pass's pods behind no local veth, by pod object.
    remote_pods: RemotePods,
    /// The last pass's link dump, if it made or had one, for the next
    /// Quiet pass's links' kinds (see [`discover::Tables::with_links`]).
    links_before: Option<discover::Links>,
    /// This daemon's LSM programs, where BPF LSM enforces, for the runs
    /// the kernel skipped.
    lsm_programs: Option<LsmPrograms>,
    /// Made at start (its receive buffer needs `CAP_NET_ADMIN`), taken
    /// by `run`: see [`LinkWatch`].
    link_watch: Option<LinkWatch>,
    /// The links the last pass dumped, to seed the link watch with.
    links_dumped: Option<discover::Links>,
    /// What failed when the node's addresses (its link-local ones, its
    /// bridges' IPv4 ones) were last written, kept until they are written
    /// again.
    node_address_errors: Vec<String>,
}

/// The pods a pass found behind no local veth (other nodes' pods), by pod
/// object: the next pass, when no link came or went, keeps an unchanged one
/// there without reading it. A cluster's pods are thousands of objects
/// scattered in memory, and reading each one's address cost a Quiet pass
/// two cache misses a pod: its locating took 3.6-4.0 ms for 10,000 pods
/// on the bench machine, nearly all of it those loads (0.9-1.2 ms
/// without them).
///
/// A Quiet pass keeps the map and the address set it is given, stamping
/// each pod it finds still there with the pass, rather than building both
/// again: ten thousand inserts a pass. Only a pass that finds a pod gone
/// (a stamp left behind) drops the stale ones and rebuilds the set.
#[derive(Default)]
struct RemotePods {
    /// The snapshot the pods are of, held so that none of their addresses
    /// in memory can be reused by a new pod object while they are keys
    /// (never read: it is held).
    _holds_pods: Option<Arc<Snapshot>>,
    /// Each such pod's object address: its IP address, and the last pass
    /// that found it.
    ips: FastMap<usize, (IpAddr, u64)>,
    /// The pass that built or stamped `ips` last.
    pass: u64,
}

/// Where the pods of a snapshot are on this node.
struct Placement {
    /// `namespace/pod` -> host-side veth ifindex.
    placed: BTreeMap<String, u32>,
    /// The address each placed pod was placed by.
    addresses: BTreeMap<String, IpAddr>,
    /// The MAC of each placed pod behind a bridge.
    macs: BTreeMap<String, [u8; 6]>,
    /// The placed pods, by object ([`pod_object`]): a pass picks them out
    /// of the snapshot's 10,000 by pointer, not by building and comparing
    /// every pod's key (1-2 ms a pass at that scale).
    placed_objects: FastSet<usize>,
    /// Local pods whose veth is not resolved yet.
    unplaced: Vec<String>,
    /// Pod-like veths no known pod holds.
    quarantined: Vec<u32>,
    /// Pod addresses behind no local veth (other nodes' pods).
    remote: FastSet<IpAddr>,
    /// The pods behind no local veth, by object (see [`RemotePods`]),
    /// stamped with `remote_pass`.
    remote_pods: FastMap<usize, (IpAddr, u64)>,
    remote_pass: u64,
    /// The links the pass read, for the next one.
    links_read: Option<discover::Links>,
    /// The links the pass dumped, if it did.
    links_dumped: Option<discover::Links>,
}

impl<S: Source> Agent<S> {
    /// Starts the syncer (it loads or adopts the programs and maps) and the
    /// metrics endpoint, then drops the capabilities the rest of the run
    /// does not need (`node::capabilities`): for the daemon's own process
    /// only. Must run inside a tokio runtime, in the node's network
    /// namespace.
    pub async fn start(
        source: S,
        pins: PinDir,
        sizes: &MapSizes,
        options: Options,
    ) -> anyhow::Result<Self> {
        let netlink = discover::connect()?;
        // Filters an earlier daemon left on veths it had not moved yet.
        // Their programs may be an older ABI's, reading its maps: then this
        // daemon takes them over as it does that ABI's links (its maps
        // filled first, its tracked flows carried over). With
        // `--tc-links-only` they would judge every packet after the links,
        // so this daemon removes them as those veths get links, through a
        // filter helper started for it. Otherwise, with no other ABI's
        // pins, what they hold is this ABI's and needs nothing: no dump
        // (two requests per interface).
        let found = if options.tc_filters_first && pins.other_abis().is_empty() {
            BTreeSet::new()
        } else {
            let t = Instant::now();
            let found = discover::palisade_filters(&netlink)
                .await
                .context("looking for Palisade's clsact filters")?;
            tracing::debug!(
                ms = t.elapsed().as_secs_f64() * 1e3,
                veths = found.len(),
                "looked for clsact filters an earlier daemon left"
            );
            found
        };
        let tc = TcAttach {
            filters_first: options.tc_filters_first,
            filters_found: !found.is_empty(),
            leftover_filters: if options.tc_filters_first {
                BTreeSet::new()
            } else {
                found
            },
        };
        let mut syncer = Syncer::start(
            pins.clone(),
            sizes,
            &options.uplinks,
            options.follow_default_routes.is_some(),
            &options.deny_cidrs,
            tc,
        )?;
        let lsm_programs = || match syncer.lsm_programs()? {
            Ok(programs) => Some(programs),
            Err(e) => {
                tracing::warn!("the LSM programs' skipped runs cannot be read: {e}");
                None
            }
        };
        let mut status = Status::default();
        let names = Names::shared();
        let snapshot: SharedSnapshot = Arc::default();
        let not_ready: SharedReadiness =
            Arc::new(std::sync::Mutex::new(Some("no pass has run yet".into())));
        let metrics = match options.metrics_addr {
            Some(addr) => {
                let m = Metrics::install(
                    pins.clone(),
                    syncer.features(),
                    options.metrics_pod_labels,
                    names.clone(),
                    lsm_programs(),
                )?;
                let hub = match Hub::start(&pins, names.clone()) {
                    Ok(hub) => Some(hub),
                    Err(e) => {
                        tracing::warn!("no event stream: {e:#}");
                        None
                    }
                };
                let state = crate::observe::http::State {
                    metrics: m.clone(),
                    hub,
                    snapshot: snapshot.clone(),
                    lsm_inactive: syncer.lsm_inactive().map(str::to_owned),
                    not_ready: not_ready.clone(),
                    private: false,
                    aside: Default::default(),
                };
                let bound = serve(addr, &state, "metrics endpoint")?;
                tracing::info!("metrics on http://{bound}/metrics");
                status.metrics = Some(bound.to_string());
                if let Some(api) = options.api_addr {
                    anyhow::ensure!(
                        api.ip().is_loopback(),
                        "--api-addr {api}: the endpoint that serves /events and /explain must be on loopback"
                    );
                    // Another daemon in this network namespace may hold the
                    // port: the node's own endpoint then stays its.
                    match serve(api, &state, "loopback endpoint") {
                        Ok(bound) => {
                            tracing::info!("events on http://{bound}/events, explain on /explain");
                            status.api = Some(bound.to_string());
                        }
                        Err(e) => tracing::warn!("{e:#}"),
                    }
                }
                Some(m)
            }
            None => None,
        };
        let link_watch = match options.quarantine {
            None => None,
            Some(_) => match LinkWatch::new() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("link events unavailable: new veths wait for the resync: {e}");
                    None
                }
            },
        };
        let own_programs = lsm_programs();
        // Before the drop: the helper holds what this process holds now.
        match syncer.start_filter_helper() {
            Ok(Some(pid)) => {
                let held = capabilities::held_by(&pid.to_string())
                    .map(capabilities::names)
                    .unwrap_or_default();
                tracing::info!(pid, "TC filter helper started, holding {}", held.join(", "));
                status.tc_filter_helper = Some(FilterHelperStatus {
                    pid,
                    capabilities: held,
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}: this process keeps CAP_NET_ADMIN for filters instead"),
        }
        // Loaded, attached, bound: nothing after this needs more.
        let links_only = syncer.features().tcx && !syncer.filters_need_net_admin();
        status.capabilities = Some(capabilities::drop_after_start(links_only));
        Ok(Self {
            source,
            syncer,
            netlink,
            status,
            options,
            metrics,
            names,
            snapshot,
            compiler: None,
            not_ready,
            placed_before: BTreeMap::new(),
            quarantined_before: Vec::new(),
            remote_before: FastSet::default(),
            remote_pods: RemotePods::default(),
            links_before: None,
            lsm_programs: own_programs,
            link_watch,
            links_dumped: None,
            node_address_errors: Vec::new(),
        })
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// One reconcile pass that checks everything: every pod's veth, every
    /// pod-like veth, every map entry.
    pub async fn reconcile(&mut self) -> anyhow::Result<()> {
        self.pass(Links::Everything, true, None).await
    }

    /// One pass; `links`: what of the node's placements it looks at again
    /// (see [`Links`]); `check_maps`: read every map entry, else write
    /// against the syncer's record of what it last wrote; `watched`: the
    /// link watch's links, current as the pass begins. `run` trusts what it
    /// can and checks everything about once per resync period (see
    /// [`full_pass`]), which repairs drift.
    async fn pass(
        &mut self,
        links: Links,
        check_maps: bool,
        watched: Option<discover::Links>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut phases = Phases::default();
        let mut t = started;
        let reading = self.source.read();
        phases.read = lap(&mut t);
        metrics::gauge!("palisade_source_up").set(
            if reading.waiting.is_none() && reading.stale.is_none() {
                1.0
            } else {
                0.0
            },
        );
        if let Some(why) = &reading.waiting {
            // A partial snapshot would remove what it has not seen yet.
            self.status.source =
                format!("waiting for {why} (the state pinned by the last run keeps enforcing)");
            self.status.ready = false;
            self.status.observed = reading.observed;
            return self.write_status();
        }
        let snapshot = reading.snapshot.clone();
        // Addresses come with links, and change with them (a bridge gets
        // its link-local address once a port is up): read where links are,
        // and at every full check.
        let node_addresses_read = check_maps || !matches!(links, Links::Quiet);
        let before = Before {
            links,
            placed: &self.placed_before,
            quarantined: &self.quarantined_before,
            remote: std::mem::take(&mut self.remote_before),
            remote_pods: std::mem::take(&mut self.remote_pods),
            links_read: match (links, watched) {
                // The periodic full pass reads for itself.
                (Links::Everything, _) => Given::Nothing,
                (_, Some(now)) => Given::Current(now),
                // Only a pass that follows no link notification may reuse
                // an earlier pass's.
                (Links::Quiet, None) => self
                    .links_before
                    .take()
                    .map_or(Given::Nothing, Given::Earlier),
                (Links::Changed, None) => Given::Nothing,
            },
        };
        self.links_before = None;
        let mut placement = locate(&self.netlink, &snapshot, &self.options, before).await?;
        self.links_before = placement.links_read.take();
        self.links_dumped = placement.links_dumped.take();
        self.remote_before = std::mem::take(&mut placement.remote);
        self.remote_pods = RemotePods {
            _holds_pods: Some(snapshot.clone()),
            ips: std::mem::take(&mut placement.remote_pods),
            pass: placement.remote_pass,
        };
        self.placed_before = placement.placed_with_addresses();
        self.quarantined_before.clone_from(&placement.quarantined);
        phases.locate = lap(&mut t);
        let uplink_errors = match &self.options.follow_default_routes {
            Some(fixed) => {
                let mut uplinks = Vec::new();
                for ifindex in discover::default_route_links(&self.netlink).await? {
                    // Gone since the routes were read: its routes went
                    // with it, and its link event brings another pass.
                    if let Ok(name) = crate::netns::ifname(ifindex) {
                        uplinks.push((ifindex, name));
                    }
                }
                for name in fixed {
                    uplinks.push((crate::netns::ifindex(name)?, name.clone()));
                }
                self.syncer.set_uplinks(&uplinks)
            }
            None => Vec::new(),
        };
        if node_addresses_read {
            let addresses =
                discover::node_addresses(&self.netlink, self.links_before.as_ref()).await?;
            self.node_address_errors = self.syncer.set_node_addresses(&addresses);
        }
        // The pass's last reads of the node's tables are done: the links of
        // a veth new to it start now, and their wait (an RCU grace period
        // each, under the routing lock) runs beside the compile and the map
        // writes rather than after them. Started before those reads, the
        // links made them wait (README, "Policy churn at cluster scale").
        self.syncer.link_ahead(
            (placement.placed.values())
                .chain(&placement.quarantined)
                .copied(),
        );
        phases.other = lap(&mut t);
        // Only the placed pods' endpoints are compiled, and only what the
        // change touched.
        let scope: BTreeSet<String> = placement.placed.keys().cloned().collect();
        let compiler = match &mut self.compiler {
            Some(c) => {
                c.update(snapshot.clone());
                c.set_scope(scope);
                c
            }
            None => self
                .compiler
                .insert(Incremental::scoped(snapshot.clone(), scope)),
        };
        let compiled = compiler.compiled();
        phases.compile = lap(&mut t);
        let lsm = compile_lsm(&snapshot);
        let has_uplinks = !self.syncer.uplinks().is_empty();
        let mut node_denies = self.options.deny_cidrs.clone();
        node_denies.extend(reading.node_denies.iter().flatten().copied());
        node_denies.sort();
        node_denies.dedup();
        let denies_unenforced = (!has_uplinks && !node_denies.is_empty()).then(|| {
            "the node deny list is not enforced: the prefilter is on no uplink (--uplink)"
                .to_owned()
        });
        let local = placed_pods(&snapshot, |pod| {
            placement.placed_objects.contains(&pod_object(pod))
        });
        let opt_out = self.options.allow_source_check_opt_out;
        let desired = desired(
            compiled,
            &snapshot,
            &placement,
            has_uplinks,
            &node_denies,
            &local,
            opt_out,
        )
        .with_lsm(&lsm);
        phases.other += lap(&mut t);
        let mut report = if check_maps {
            self.syncer.apply(&desired)?
        } else {
            self.syncer.apply_trusting(&desired)?
        };
        phases.sync = lap(&mut t);
        report.attach_errors.extend(uplink_errors);
        report.attach_errors.extend(denies_unenforced);
        report
            .errors
            .extend(self.node_address_errors.iter().cloned());
        {
            let mut names = crate::observe::names::lock(&self.names);
            names.learn(&compiled.policies, &report.endpoint_ids);
            names.learn_lsm(&lsm, report.lsm.as_ref().map(|l| &l.cgroups));
        }
        let lsm_status = self.lsm_status(&lsm, &report, &placement);
        let source_status = SourceStatus::of(&local, &report, opt_out);
        phases.other += lap(&mut t);
        self.publish(
            reading,
            snapshot,
            placement,
            &report,
            (lsm_status, source_status),
            (started, phases),
        )
    }

    /// What of the process and file rules is in force, and what is not.
    fn lsm_status(&self, lsm: &LsmDesired, report: &Report, placement: &Placement) -> LsmStatus {
        let mut not_enforced: BTreeMap<String, BTreeSet<String>> = lsm.not_enforced.clone();
        let mut pods = BTreeMap::new();
        let state = match self.syncer.lsm_inactive() {
            Some(why) => {
                for policy in lsm.policies.keys() {
                    not_enforced
                        .entry(policy.clone())
                        .or_default()
                        .insert(lsm_inactive(why));
                }
                format!("inactive ({why})")
            }
            None => "enforcing".to_owned(),
        };
        let mut runs_skipped = BTreeMap::new();
        let mut unread = Vec::new();
        for (program, skipped) in self.lsm_programs.iter().flat_map(LsmPrograms::runs_skipped) {
            match skipped {
                Ok(0) => {}
                Ok(n) => {
                    runs_skipped.insert(program.to_owned(), n);
                }
                Err(e) => unread.push(format!("{program}: {e}")),
            }
        }
        let mut state = state;
        if !runs_skipped.is_empty() {
            let total: u64 = runs_skipped.values().sum();
            state = format!(
                "{state}, but the kernel skipped {total} runs of its programs: each an \
                 operation that passed unjudged (lsm_runs_skipped)"
            );
        }
        if !unread.is_empty() {
            state = format!(
                "{state} (runs the kernel skipped not known: {})",
                unread.join(", ")
            );
        }
        let failed = report.lsm.as_ref().map(|l| &l.not_enforced);
        for (pod, rules) in &lsm.pods {
            let why = match (self.syncer.lsm_inactive(), failed.and_then(|f| f.get(pod))) {
                (Some(why), _) => lsm_inactive(why),
                (None, Some(why)) => why.clone(),
                (None, None) => "in force".to_owned(),
            };
            debug_assert!(rules.process.is_some() || rules.file.is_some());
            pods.insert(pod.clone(), why);
        }
        // Local pods the rules select whose cgroup the source did not give.
        for (pod, policies) in &lsm.selected_without_cgroup {
            if !placement.placed.contains_key(pod) {
                continue;
            }
            let why = format!("pod {pod}: its cgroup is not known, so its rules are not enforced");
            pods.insert(pod.clone(), why.clone());
            for policy in policies {
                not_enforced
                    .entry(policy.clone())
                    .or_default()
                    .insert(why.clone());
            }
        }
        LsmStatus {
            state,
            runs_skipped,
            not_enforced: not_enforced
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            pods,
        }
    }

    /// Logs the pass, counts it, and writes the status.
    fn publish(
        &mut self,
        reading: Reading,
        snapshot: Arc<Snapshot>,
        placement: Placement,
        report: &Report,
        (lsm, sources): (LsmStatus, SourceStatus),
        (started, mut phases): (Instant, Phases),
    ) -> anyhow::Result<()> {
        let mut t = Instant::now();
        for (policy, reasons) in &lsm.not_enforced {
            if self.status.policies_not_enforced.get(policy) != Some(reasons) {
                for why in reasons {
                    tracing::warn!(policy, "not enforced: {why}");
                }
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
        let lsm_errors = report
            .lsm
            .as_ref()
            .map(|l| l.errors.clone())
            .unwrap_or_default();
        let errors: Vec<String> = [
            &reading.errors,
            &report.errors,
            &report.attach_errors,
            &lsm_errors,
            &sources.errors,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        for e in &errors {
            tracing::warn!("{e}");
        }
        // Listed once that is enforced (the veth's programs attached).
        let quarantined: Vec<u32> = placement
            .quarantined
            .iter()
            .copied()
            .filter(|&i| {
                !report
                    .not_enforced
                    .contains_key(&crate::compile::desired::quarantine_name(i))
            })
            .collect();
        metrics::gauge!("palisade_quarantined_veths").set(quarantined.len() as f64);
        for (pod, why) in &sources.unchecked {
            if self.status.sources_unchecked.get(pod) != Some(why) {
                tracing::warn!(pod, "sources not checked: {why}");
            }
        }
        for pod in self.status.sources_unchecked.keys() {
            if !sources.unchecked.contains_key(pod) {
                tracing::info!(pod, "sources checked");
            }
        }
        for (pod, prefixes) in &sources.prefixes {
            if self.status.source_prefixes.get(pod) != Some(prefixes) {
                tracing::warn!(
                    pod,
                    ?prefixes,
                    "may send from prefixes besides its own addresses"
                );
            }
        }
        for pod in self.status.source_prefixes.keys() {
            if !sources.prefixes.contains_key(pod) {
                tracing::info!(pod, "no source prefixes besides its own addresses");
            }
        }
        let ready = placement.unplaced.is_empty() && report.in_force();
        if self.metrics.is_some() {
            self.count(&reading, &snapshot, &placement, report, started);
            self.count_not_enforced(&lsm);
        }
        metrics::gauge!("palisade_ready").set(if ready { 1.0 } else { 0.0 });
        phases.other += lap(&mut t);
        tracing::debug!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            ?phases,
            unplaced = placement.unplaced.len(),
            "pass"
        );
        self.status = Status {
            pass_phases_ms: phases,
            revision: reading.revision,
            ready,
            passes: self.status.passes + 1,
            pass_ms: started.elapsed().as_secs_f64() * 1e3,
            endpoints: placement.placed,
            unplaced: placement.unplaced,
            not_enforced: report.not_enforced.clone(),
            quarantined,
            tc_filters: self.syncer.on_filters(),
            lsm: lsm.state,
            lsm_runs_skipped: lsm.runs_skipped,
            policies_not_enforced: lsm.not_enforced,
            lsm_pods: lsm.pods,
            sources_unchecked: sources.unchecked,
            source_prefixes: sources.prefixes,
            policies: snapshot.policies.len(),
            errors,
            metrics: self.status.metrics.clone(),
            api: self.status.api.clone(),
            source: match &reading.stale {
                Some(why) => format!("stale: {why} (the last good state stays in force)"),
                None => "in sync".into(),
            },
            observed: reading.observed,
            capabilities: self.status.capabilities.clone(),
            tc_filter_helper: self
                .status
                .tc_filter_helper
                .clone()
                .filter(|h| self.syncer.filter_helper() == Some(h.pid)),
        };
        let last = std::mem::replace(
            &mut *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()),
            snapshot,
        );
        let written = self.write_status();
        // Usually the last holder of the previous snapshot: freeing its
        // 10,000 pods' references takes a few tenths of a millisecond,
        // which the status (what is in force) need not wait for.
        drop(last);
        written
    }

    fn write_status(&self) -> anyhow::Result<()> {
        let why = (!self.status.ready).then(|| {
            if self.status.source.starts_with("waiting") {
                self.status.source.clone()
            } else if !self.status.unplaced.is_empty() {
                format!(
                    "pods without a veth yet: {}",
                    self.status.unplaced.join(", ")
                )
            } else if self.status.errors.is_empty() && !self.status.not_enforced.is_empty() {
                let why: Vec<String> = self
                    .status
                    .not_enforced
                    .iter()
                    .map(|(name, why)| format!("{name}: {why}"))
                    .collect();
                format!("not enforced yet: {}", why.join("; "))
            } else {
                "a write or an attachment failed (see the status errors)".into()
            }
        });
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = why;
        if let Some(path) = &self.options.status_file {
            write_atomically(path, &serde_json::to_vec_pretty(&self.status)?)?;
        }
        Ok(())
    }

    /// The pass's metrics; errors are counted once, in the pass that first
    /// reports them.
    fn count(
        &self,
        reading: &Reading,
        snapshot: &Snapshot,
        placement: &Placement,
        report: &Report,
        started: Instant,
    ) {
        let new = |list: &[String]| {
            list.iter()
                .filter(|e| !self.status.errors.contains(e))
                .count() as u64
        };
        metrics::counter!("palisade_errors_total", "kind" => "source")
            .increment(new(&reading.errors));
        metrics::counter!("palisade_errors_total", "kind" => "attach")
            .increment(new(&report.attach_errors));
        metrics::counter!("palisade_errors_total", "kind" => "write")
            .increment(new(&report.errors));
        metrics::gauge!("palisade_source_errors").set(reading.errors.len() as f64);
        metrics::gauge!("palisade_policies").set(snapshot.policies.len() as f64);
        metrics::gauge!("palisade_endpoints").set(placement.placed.len() as f64);
        metrics::histogram!("palisade_reconcile_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }

    /// One gauge per policy with rules this node does not enforce; a
    /// policy that is enforced again drops to 0.
    fn count_not_enforced(&self, lsm: &LsmStatus) {
        for policy in self.status.policies_not_enforced.keys() {
            if !lsm.not_enforced.contains_key(policy) {
                metrics::gauge!("palisade_policy_not_enforced", "policy" => policy.clone())
                    .set(0.0);
            }
        }
        for policy in lsm.not_enforced.keys() {
            metrics::gauge!("palisade_policy_not_enforced", "policy" => policy.clone()).set(1.0);
        }
        let in_force = lsm.pods.values().filter(|w| *w == "in force").count();
        metrics::gauge!("palisade_lsm_pods", "state" => "in_force").set(in_force as f64);
        metrics::gauge!("palisade_lsm_pods", "state" => "not_enforced")
            .set((lsm.pods.len() - in_force) as f64);
    }

    /// Starts moving one veth from clsact filters to TCX links, on a
    /// thread of its own (see `sync::links`).
    fn start_move(&mut self, ifindex: u32) {
        if let Err(e) = self.syncer.start_move(ifindex) {
            self.move_failed(e);
        }
    }

    /// Takes the end of the move under way, if it has ended, and publishes
    /// it in the status. A failed move is logged, listed in the status's
    /// errors and counted as an attach error; the veth stays enforced by
    /// its filters and is tried again once it has waited `MOVE_AT_LATEST`.
    /// Whether a move ended.
    fn move_ended(&mut self) -> bool {
        let Some(moved) = self.syncer.finish_move(false) else {
            return false;
        };
        if let crate::sync::LinkEnd::Failed(e) = moved.end {
            self.move_failed(e);
        }
        self.status.tc_filters = self.syncer.on_filters();
        if let Err(e) = self.write_status() {
            tracing::warn!("writing the status: {e:#}");
        }
        true
    }

    fn move_failed(&mut self, e: String) {
        tracing::warn!("{e}");
        if !self.status.errors.contains(&e) {
            metrics::counter!("palisade_errors_total", "kind" => "attach").increment(1);
            self.status.errors.push(e);
        }
    }

    /// Runs passes until Ctrl-C or SIGTERM: at once, on every change the
    /// source signals, and every resync period (sooner while pods are unplaced).
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut changes = self.source.changes();
        let mut watch = self.link_watch.take();
        // When the oldest source change not yet in force was noticed.
        let mut pending: Option<Instant> = None;
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // What the next pass checks (see `pass`), and when a pass last
        // read every map.
        let (mut recheck, mut check_maps) = (Links::Everything, true);
        let mut last_full = Instant::now();
        // Retries for pods whose veth is not resolved yet, since the last
        // pass that placed every pod: 5 ms apart at first, then up to 50.
        let mut retries = 0u32;
        // When the last move to TCX links ended.
        let mut last_move = Instant::now();
        // A change's pass found the full pass due and ran first: the loop
        // wakes again at once for the full pass (see [`full_pass`]).
        let mut full_next = false;
        // The full pass runs in two halves, each a pass of its own, so
        // that a change that lands in one waits for that half only: every
        // pod located again, then every map read. Since when the second
        // is owed (see [`second_half_now`]).
        let mut maps_owed: Option<Instant> = None;
        // Told when a move, or a new veth's links, ended off the loop.
        let ended = self.syncer.ended();
        loop {
            if check_maps {
                last_full = Instant::now();
                maps_owed = None;
            }
            let mut watched = None;
            if let Some(w) = &mut watch {
                match w.drain() {
                    Ok(()) => {
                        if w.take_changed() && recheck == Links::Quiet {
                            recheck = Links::Changed;
                        }
                        watched = w.current();
                    }
                    Err(e) => {
                        tracing::warn!("link events lost: new veths wait for the resync: {e}");
                        (watch, recheck) = (None, Links::Everything);
                    }
                }
            }
            tracing::debug!(?recheck, check_maps, "pass begins");
            let failed = match self.pass(recheck, check_maps, watched).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::error!("reconcile: {e:#}");
                    true
                }
            };
            if let (Some(w), Some(dumped)) = (&mut watch, self.links_dumped.take()) {
                w.seed(&dumped);
            }
            if self.status.ready
                && let Some(since) = pending.take()
            {
                metrics::histogram!("palisade_change_to_in_force_seconds")
                    .record(since.elapsed().as_secs_f64());
            }
            let wait = if full_next || maps_owed.is_some() {
                Duration::ZERO
            } else if self.status.unplaced.is_empty() {
                retries = 0;
                self.options.resync
            } else {
                retries += 1;
                Duration::from_millis((5u64 << (retries - 1).min(4)).min(50))
            };
            // With the links watched, a pass woken by the source or by a
            // retry may trust the last pass's placements (no link came or
            // went), or after link events those whose veth is still there,
            // and any pass the syncer's record of what it wrote; but about
            // one pass per resync period looks at everything, whatever the
            // churn, and repairs drift (see [`full_pass`]). Unwatched,
            // nothing says no link came or went: every pass locates every
            // pod. A source watcher that is not running (inotify
            // unavailable) has closed its channel: `None` disables the
            // branch instead of waking the loop at once, again and again.
            (recheck, check_maps) = (Links::Everything, true);
            let wake = tokio::time::Instant::now() + wait;
            // Veths on clsact filters move to TCX links (see
            // `sync::links`), one at a time: between passes once nothing
            // has happened for `tc_move_when_idle`, or for `DUE_IDLE` once
            // one has waited `MOVE_AT_LATEST`; after each pass one that
            // has waited `MOVE_OVERDUE`, whatever the churn. A move runs
            // on a thread of its own (about 24 ms a veth, most of it
            // waiting under the routing lock): passes go on meanwhile,
            // and the next move starts once it has ended.
            if self.syncer.moving().is_none()
                && let Some(ifindex) = self.syncer.next_move(MOVE_OVERDUE).due
            {
                self.start_move(ifindex);
            }
            // Whether work that waits on this pass woke the loop (a source
            // change, a link's, links made, a retry for an unplaced pod),
            // which a due full pass should not hold up; not the resync
            // timer, nor the wake for the full pass put off.
            let mut by_change = false;
            let stop = loop {
                let moving = self.syncer.moving().is_some();
                let linking = self.syncer.linking();
                let (idle_for, idle) = idle_move(
                    self.syncer.next_move(MOVE_AT_LATEST),
                    self.options.tc_move_when_idle,
                    last_move.elapsed(),
                );
                tokio::select! {
                    biased;
                    Some(()) = changes.recv() => {
                        pending.get_or_insert_with(Instant::now);
                        recheck = since_last_pass(&mut watch);
                        check_maps = false;
                        by_change = true;
                    }
                    changed = link_changes(&mut watch) => {
                        by_change = true;
                        (recheck, check_maps) = match changed {
                            Ok(()) => (Links::Changed, false),
                            Err(e) => {
                                tracing::warn!(
                                    "link events lost: new veths wait for the resync: {e}"
                                );
                                watch = None;
                                (Links::Everything, true)
                            }
                        };
                    }
                    () = tokio::time::sleep_until(wake) => {
                        let retry = !self.status.unplaced.is_empty();
                        if retry || maps_owed.is_some() {
                            recheck = since_last_pass(&mut watch);
                            check_maps = false;
                        }
                        // The pass that places a new pod, unless this is
                        // the wake for the full pass (or its second half)
                        // put off.
                        by_change = retry && !full_next && maps_owed.is_none();
                    }
                    _ = tokio::signal::ctrl_c() => break true,
                    _ = terminate.recv() => break true,
                    // A move that ended, or veths whose links the attach
                    // thread made: those are put in force by a pass.
                    () = ended.notified(), if moving || linking => {
                        if self.move_ended() {
                            last_move = Instant::now();
                        }
                        if !self.syncer.take_made() {
                            continue;
                        }
                        recheck = since_last_pass(&mut watch);
                        check_maps = false;
                        by_change = true;
                    }
                    () = tokio::time::sleep(idle_for), if idle.is_some() && !moving => {
                        if let Some(ifindex) = idle {
                            self.start_move(ifindex);
                        }
                        continue;
                    }
                }
                break false;
            };
            if stop {
                break;
            }
            // A pass that reads everything anyway (link events lost) is the
            // full pass: nothing it would hold up. While its second half
            // is owed, no other full pass begins.
            let full;
            (full, full_next) = match maps_owed {
                Some(_) if !failed => (false, false),
                _ => full_pass(
                    last_full.elapsed(),
                    self.options.resync,
                    by_change && !check_maps,
                    failed,
                ),
            };
            if full && (failed || watch.is_none()) {
                // A failed pass's work is checked whole, at once; and
                // unwatched, every pass locates every pod anyway: a first
                // half would be one such pass more.
                (recheck, check_maps) = (Links::Everything, true);
            } else if full {
                (recheck, check_maps) = (Links::Everything, false);
                maps_owed = Some(Instant::now());
            } else if let Some(owed) = maps_owed
                && second_half_now(
                    owed.elapsed(),
                    last_full.elapsed(),
                    self.options.resync,
                    by_change,
                )
            {
                check_maps = true;
            }
        }
        // Enforcement stays: pinned links and maps outlive the daemon.
        tracing::info!("stopping; programs and maps stay pinned and enforcing");
        Ok(())
    }
}

/// The source check's share of the status.
struct SourceStatus {
    /// Pods whose annotation asks for what this node does not do.
    errors: Vec<String>,
    /// Pods in force whose sources go unchecked, with why.
    unchecked: BTreeMap<String, String>,
    /// Pods in force that may send from extra prefixes, with those in
    /// force: the annotation's that were written, and any stale one whose
    /// removal failed.
    prefixes: BTreeMap<String, Vec<String>>,
}

impl SourceStatus {
    fn of(local: &[&Pod], report: &Report, opt_out: bool) -> Self {
        // As written: an endpoint whose write failed keeps its last
        // sources.
        let in_force = || {
            local
                .iter()
                .filter(|p| !report.not_enforced.contains_key(&p.key()))
        };
        Self {
            errors: local
                .iter()
                .flat_map(|p| {
                    [
                        Sources::refused(p, opt_out),
                        Sources::prefixes_refused(p, opt_out),
                        Sources::addresses_refused(p, opt_out),
                    ]
                })
                .flatten()
                .collect(),
            unchecked: in_force()
                .filter_map(|p| Some((p.key(), Sources::unchecked(p, opt_out)?)))
                .collect(),
            prefixes: in_force()
                .filter_map(|p| {
                    let key = p.key();
                    let is = |set: &BTreeSet<(String, ipnet::IpNet)>, net: &ipnet::IpNet| {
                        set.contains(&(key.clone(), *net))
                    };
                    let written = Sources::prefixes(p, opt_out)
                        .iter()
                        .filter(|net| !is(&report.source_prefixes_unwritten, net));
                    let left = report
                        .source_prefixes_left
                        .iter()
                        .filter(|(holder, _)| *holder == key)
                        .map(|(_, net)| net);
                    let nets: Vec<String> = written.chain(left).map(ToString::to_string).collect();
                    (!nets.is_empty()).then_some((key, nets))
                })
                .collect(),
        }
    }
}

struct LsmStatus {
    state: String,
    runs_skipped: BTreeMap<String, u64>,
    not_enforced: BTreeMap<String, Vec<String>>,
    pods: BTreeMap<String, String>,
}

/// Serves `state` on `addr`, privately when `addr` is loopback.
fn serve(
    addr: std::net::SocketAddr,
    state: &crate::observe::http::State,
    what: &str,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("{what} on {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let state = crate::observe::http::State {
        private: bound.ip().is_loopback(),
        ..state.clone()
    };
    tokio::spawn(crate::observe::http::serve(
        tokio::net::TcpListener::from_std(listener)?,
        state,
    ));
    Ok(bound)
}

/// Finds each pod's veth on this node, and the pod-like veths no known pod
/// holds (when quarantine is on).
///
/// A bridged pod is found through the node's neighbour entry for its
/// address, which the kernel lets go stale and collects once the node has
/// not spoken to the pod for a while (as soon as the node holds more than
/// `gc_thresh1` neighbours in all). A pod placed before keeps its veth
/// while that veth exists and nothing else claims it: a missing neighbour
/// entry must not turn a known pod's veth into a quarantined one. Such a
/// pod is not waited for, and is nudged only while a pod-like veth no pod
/// holds is there (its new veth, if it moved).
async fn locate(
    netlink: &rtnetlink::Handle,
    snapshot: &Snapshot,
    options: &Options,
    before: Before<'_>,
) -> anyhow::Result<Placement> {
    let mut placed = BTreeMap::new();
    let mut placed_objects = FastSet::default();
    let mut addresses = BTreeMap::new();
    let mut macs = BTreeMap::new();
    // The last pass's remote pods and addresses, read throughout the pass
    // as they were; what this pass finds remote goes to `found_remote`,
    // added at the end (see [`RemotePods`]).
    let quiet = before.links == Links::Quiet;
    let RemotePods {
        _holds_pods: _held_while_read,
        ips: mut remote_pods,
        pass: last_pass,
    } = before.remote_pods;
    let mut remote = before.remote;
    let pass = last_pass.wrapping_add(1);
    let mut found_remote: Vec<(usize, IpAddr)> = Vec::new();
    let mut unresolved = Vec::new();
    let mut kept_unresolved = Vec::new();
    let mut tables = discover::Tables::with_links(netlink, before.links_read);
    // Most pods are other nodes': their keys are not even built.
    let placed_at: FastSet<IpAddr> = before.placed.values().map(|(ip, _, _)| *ip).collect();
    // The pods this pass keeps where they were, and the rest to locate.
    let mut fresh = Vec::new();
    let mut t = Instant::now();
    let mut laps = [0.0; 4];
    for pod in &snapshot.pods {
        // A pod the last pass found remote is the same object with the
        // same address: its address is known without reading the pod, and
        // it was placed nowhere.
        let remembered = match remote_pods.get_mut(&pod_object(pod)) {
            Some((ip, seen)) if quiet => {
                *seen = pass;
                Some(*ip)
            }
            Some((ip, _)) => Some(*ip),
            None => None,
        };
        let Some(ip) = remembered.or_else(|| pod.ips.first().copied()) else {
            continue;
        };
        if remembered.is_none() && placed_at.contains(&ip) && before.links != Links::Everything {
            let key = pod.key();
            if let Some(&(was, veth, mac)) = before.placed.get(&key)
                && was == ip
                && (before.links == Links::Quiet || tables.is_veth(veth).await?)
            {
                addresses.insert(key.clone(), ip);
                macs.extend(mac.map(|m| (key.clone(), m)));
                placed.insert(key, veth);
                placed_objects.insert(pod_object(pod));
                continue;
            }
        }
        if quiet && remembered.is_some() {
            continue;
        }
        if quiet && remote.contains(&ip) {
            found_remote.push((pod_object(pod), ip));
            continue;
        }
        fresh.push((pod, ip));
    }
    // Only an address an on-link route covers can be this node's: the rest
    // are other nodes' at once. A new pod of this node is unknown to the
    // node's neighbour table until something speaks to it: asked first, it
    // has answered by the time the table is read below.
    laps[0] = lap(&mut t);
    let mut nudged = HashSet::new();
    let mut candidates = Vec::new();
    for (pod, ip) in fresh {
        if !tables.may_be_local(ip).await? {
            found_remote.push((pod_object(pod), ip));
            continue;
        }
        if !placed_at.contains(&ip) && !remote.contains(&ip) {
            discover::nudge(ip);
            nudged.insert(ip);
        }
        candidates.push((pod, ip));
    }
    let located = candidates.len();
    for (pod, ip) in candidates {
        match tables.locate(ip).await? {
            Ok(p) => {
                let key = pod.key();
                addresses.insert(key.clone(), ip);
                macs.extend(p.bridged_mac().map(|m| (key.clone(), m)));
                placed.insert(key, p.veth());
                placed_objects.insert(pod_object(pod));
            }
            Err(Unplaced::Unresolved { .. }) => {
                let key = pod.key();
                // Placed before at this address, its veth still there: kept
                // below, neither waited for nor (unless a veth no pod holds
                // could be its new one, below) asked for. A nudge is a
                // broadcast the bridge floods to every pod, and the kernel
                // collects the entries of pods the node does not speak to
                // in batches: a pass that nudged and waited for a batch of
                // 100-192 took 54-152 ms to locate.
                if let Some(&(was, veth, _)) = before.placed.get(&key)
                    && was == ip
                    && tables.is_veth(veth).await?
                {
                    kept_unresolved.push((pod, key, ip));
                    continue;
                }
                if !nudged.contains(&ip) {
                    discover::nudge(ip);
                }
                unresolved.push((pod, key, ip));
            }
            // Not behind a local veth: another node's pod.
            Err(Unplaced::NoRoute | Unplaced::NotLocal { .. }) => {
                found_remote.push((pod_object(pod), ip));
            }
        }
    }
    // A new pod's address is not resolved until something speaks to it:
    // the nudges above make the node ask, and a pod on this node answers
    // within a millisecond or so. Looked for again in this pass rather than
    // in one more pass behind it.
    laps[1] = lap(&mut t);
    let unresolved_at_first = unresolved.len();
    let waited = Instant::now();
    for _ in 0..RESOLVE_TRIES {
        if unresolved.is_empty() {
            break;
        }
        tokio::time::sleep(RESOLVE_WAIT).await;
        tables.forget_neighbours();
        let mut still = Vec::new();
        for (pod, key, ip) in unresolved {
            match tables.locate(ip).await? {
                Ok(p) => {
                    addresses.insert(key.clone(), ip);
                    macs.extend(p.bridged_mac().map(|m| (key.clone(), m)));
                    placed.insert(key, p.veth());
                    placed_objects.insert(pod_object(pod));
                }
                Err(_) => still.push((pod, key, ip)),
            }
        }
        unresolved = still;
    }
    if unresolved_at_first + kept_unresolved.len() > 0 {
        tracing::debug!(
            count = unresolved_at_first,
            still = unresolved.len(),
            ms = waited.elapsed().as_secs_f64() * 1e3,
            kept = kept_unresolved.len(),
            "addresses unresolved at first"
        );
    }
    let kept_ips: Vec<IpAddr> = kept_unresolved.iter().map(|&(_, _, ip)| ip).collect();
    let mut unplaced = Vec::new();
    for (pod, key, ip) in kept_unresolved.into_iter().chain(unresolved) {
        let claimed = |veth: u32| placed.values().any(|v| *v == veth);
        match before.placed.get(&key) {
            Some(&(was, veth, mac))
                if was == ip && !claimed(veth) && tables.is_veth(veth).await? =>
            {
                addresses.insert(key.clone(), ip);
                macs.extend(mac.map(|m| (key.clone(), m)));
                placed.insert(key, veth);
                placed_objects.insert(pod_object(pod));
            }
            _ => unplaced.push(key),
        }
    }
    if quiet {
        // A pod gone from the snapshot left its stamp behind.
        if remote_pods.values().any(|&(_, seen)| seen != pass) {
            remote_pods.retain(|_, (_, seen)| *seen == pass);
            remote = remote_pods.values().map(|&(ip, _)| ip).collect();
        }
    } else {
        remote_pods.clear();
        remote.clear();
    }
    for (object, ip) in found_remote {
        remote_pods.insert(object, (ip, pass));
        remote.insert(ip);
    }
    laps[2] = lap(&mut t);
    let known: BTreeSet<u32> = placed.values().copied().collect();
    let quarantined = match (before.links, &options.quarantine) {
        (_, None) => Vec::new(),
        // The same veths, less those a pod holds now.
        (Links::Quiet, Some(_)) => before
            .quarantined
            .iter()
            .copied()
            .filter(|i| !known.contains(i))
            .collect(),
        (_, Some(prefixes)) => tables
            .pod_veths(prefixes)
            .await?
            .into_iter()
            .filter(|i| !known.contains(i))
            .collect(),
    };
    // A kept pod may have come back on a new veth before its old one went
    // (a sandbox made again with the same address), and only a veth no pod
    // holds can be that one: then the kept pods are asked for after all,
    // off the pass and without waiting; the next full pass reads their
    // answers.
    if options.quarantine.is_none() || !quarantined.is_empty() {
        discover::nudge_aside(kept_ips);
    }
    laps[3] = lap(&mut t);
    if !quiet {
        tracing::debug!(
            kept_ms = laps[0],
            located,
            located_ms = laps[1],
            unresolved_ms = laps[2],
            quarantine_ms = laps[3],
            "located"
        );
    }
    Ok(Placement {
        placed,
        placed_objects,
        addresses,
        macs,
        unplaced,
        quarantined,
        remote,
        remote_pods,
        remote_pass: pass,
        links_read: tables.links_read(),
        links_dumped: tables.links_dumped(),
    })
}

/// How long a pass waits for the addresses it nudged, and how many times.
const RESOLVE_WAIT: Duration = Duration::from_millis(1);
const RESOLVE_TRIES: usize = 3;

/// What a pass looks at again on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Links {
    /// No link came or went since the last pass: every pod placed is
    /// where it was, every address behind no local veth still is, and the
    /// quarantined veths are the same; only new and unplaced pods are
    /// located, with the last pass's link dump for each link's kind (see
    /// [`discover::Tables::with_links`]).
    Quiet,
    /// Links came or went: pods whose veth is gone, unplaced pods and other
    /// nodes' addresses are located again, and the quarantine is read
    /// afresh; a placed pod whose veth is still there keeps it.
    Changed,
    /// The periodic full pass (its first half, the second reads every
    /// map: see [`second_half_now`]): every pod located again, whatever it held,
    /// which repairs a placement no link event told of (a pod's address
    /// answered from another veth while its old one lingers). A pod whose
    /// address the node no longer resolves keeps its veth; it is asked for
    /// only while a veth no pod holds is there, and the next full pass
    /// reads the answer (see [`locate`]).
    Everything,
}

/// Whether the pass about to run is a full one, and whether a full one
/// follows it, `since_full` after the last full pass. A full pass due when
/// work that waits on the pass woke the loop (`by_change`: a change, or a
/// retry for an unplaced pod) runs after that work's own pass, as soon as
/// no other change is queued: it locates every pod and then reads every
/// map (tens of milliseconds at 10,000 pods), and the change need not
/// wait for it. Not once it is half a period overdue, so that a stream of changes
/// cannot put drift repair off. A failed pass may have taken link events
/// off the channel and not written their quarantine: the next one looks at
/// everything rather than trust it.
fn full_pass(
    since_full: Duration,
    resync: Duration,
    by_change: bool,
    failed: bool,
) -> (bool, bool) {
    let due = since_full >= resync;
    let overdue = since_full >= resync + resync / 2;
    let next = due && by_change && !overdue && !failed;
    (failed || (due && !next), next)
}

/// Whether the full pass's second half, every map read, runs now, owed
/// for `owed_for` since its first half and `since_full` after the last
/// read of every map: unless a change (`by_change`) woke the loop, whose
/// own pass runs first; then the loop wakes again at once. Not once it
/// has been owed half a period, nor once the maps' last read is half a
/// period overdue (as [`full_pass`] bounds the first half), so that a
/// stream of changes cannot put drift repair off: then it runs with the
/// change.
fn second_half_now(
    owed_for: Duration,
    since_full: Duration,
    resync: Duration,
    by_change: bool,
) -> bool {
    !by_change || owed_for >= resync / 2 || since_full >= resync + resync / 2
}

/// How long the loop waits idle before a move, and which veth it moves
/// then: one that has waited `MOVE_AT_LATEST` after `DUE_IDLE`, but not
/// sooner than `when_idle` after the last move (`since_move` ago: a
/// restart's veths all fall due together, and back-to-back moves would
/// hold the loop half the time); else the longest waiting whose last move
/// did not fail after `when_idle`.
fn idle_move(next: NextMove, when_idle: Duration, since_move: Duration) -> (Duration, Option<u32>) {
    match next.due {
        Some(due) => {
            let spaced = when_idle.saturating_sub(since_move);
            (DUE_IDLE.min(when_idle).max(spaced), Some(due))
        }
        None => (when_idle, next.when_idle),
    }
}

/// What a pass woken now looks at again, by what the link watch read since
/// the last pass (everything, unwatched).
fn since_last_pass(watch: &mut Option<LinkWatch>) -> Links {
    let Some(w) = watch else {
        return Links::Everything;
    };
    match w.drain() {
        Ok(()) if w.take_changed() => Links::Changed,
        Ok(()) => Links::Quiet,
        Err(e) => {
            tracing::warn!("link events lost: new veths wait for the resync: {e}");
            *watch = None;
            Links::Everything
        }
    }
}

/// Until a link comes, goes or changes shape; never, unwatched.
async fn link_changes(watch: &mut Option<LinkWatch>) -> std::io::Result<()> {
    match watch {
        Some(w) => {
            w.changes().await?;
            w.take_changed();
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// What the last pass found on the node.
struct Before<'a> {
    links: Links,
    /// Each placed pod's address, veth and (bridged) MAC.
    placed: &'a BTreeMap<String, (IpAddr, u32, Option<[u8; 6]>)>,
    /// The quarantined veths.
    quarantined: &'a [u32],
    /// The addresses no local veth was behind (taken: a Quiet pass keeps
    /// and extends them). A pass that fails midway gives them up: the
    /// next one, which looks at everything after a failure, builds them
    /// again, nudging every on-link address it did not place before.
    remote: FastSet<IpAddr>,
    /// The pods no local veth was behind, by object (taken, the same).
    remote_pods: RemotePods,
    /// Links to read instead of dumping them.
    links_read: Given,
}

impl Placement {
    /// What the next pass may keep of this one.
    fn placed_with_addresses(&self) -> BTreeMap<String, (IpAddr, u32, Option<[u8; 6]>)> {
        self.placed
            .iter()
            .filter_map(|(key, veth)| {
                let address = *self.addresses.get(key)?;
                Some((key.clone(), (address, *veth, self.macs.get(key).copied())))
            })
            .collect()
    }
}

/// The compiler's state for this node: its pods, its quarantined veths, and
/// the prefilter's share where it has uplinks (none where it has none).
fn desired<'a>(
    compiled: &'a Compiled,
    snapshot: &Snapshot,
    placement: &Placement,
    has_uplinks: bool,
    node_denies: &'a [ipnet::IpNet],
    local: &[&Pod],
    opt_out: bool,
) -> Desired<'a> {
    let desired = Desired::on_node(compiled, &placement.placed, &placement.quarantined)
        .with_sources(local.iter().copied(), opt_out)
        .with_macs(&placement.macs)
        .with_node_denies(node_denies);
    if !has_uplinks {
        desired.without_pod_denies()
    } else {
        desired.with_pod_denies(snapshot)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status lists the prefixes in force: a prefix that could not be
    /// written is left out, and a stale one whose removal failed is listed
    /// under the pod that holds it, annotated prefixes or none.
    #[test]
    fn listed_source_prefixes_are_those_in_force() {
        use crate::model::SourcePrefixes;
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let mut pod = crate::model::standard::pods().next().unwrap();
        // Prefixes count only where an address of the pod is known.
        pod.ips = vec!["10.0.0.1".parse().unwrap()];
        pod.source_prefixes = SourcePrefixes::List(vec![net("10.8.0.0/24"), net("fd00:8::/64")]);
        let key = pod.key();
        let listed = |report: &Report| SourceStatus::of(&[&pod], report, true).prefixes;
        let all = BTreeMap::from([(
            key.clone(),
            vec!["10.8.0.0/24".to_owned(), "fd00:8::/64".to_owned()],
        )]);
        assert_eq!(listed(&Report::default()), all);
        let mut report = Report::default();
        report
            .source_prefixes_unwritten
            .insert((key.clone(), net("fd00:8::/64")));
        assert_eq!(
            listed(&report),
            BTreeMap::from([(key.clone(), vec!["10.8.0.0/24".to_owned()])])
        );
        report
            .source_prefixes_unwritten
            .insert((key.clone(), net("10.8.0.0/24")));
        assert!(listed(&report).is_empty());
        report
            .source_prefixes_left
            .insert((key.clone(), net("10.7.0.0/16")));
        assert_eq!(
            listed(&report),
            BTreeMap::from([(key.clone(), vec!["10.7.0.0/16".to_owned()])])
        );
        // A pod not in force is not listed, whatever its prefixes.
        report.not_enforced.insert(key, "its write failed".into());
        assert!(listed(&report).is_empty());
    }

    #[test]
    fn a_veth_due_for_its_move_waits_for_a_short_idle_moment_only() {
        let idle = Duration::from_millis(200);
        let due = NextMove {
            due: Some(7),
            when_idle: Some(9),
        };
        let long_ago = Duration::from_secs(5);
        assert_eq!(idle_move(due, idle, long_ago), (DUE_IDLE, Some(7)));
        // Not sooner than `when_idle` after the last move.
        let just_moved = Duration::from_millis(50);
        assert_eq!(
            idle_move(due, idle, just_moved),
            (Duration::from_millis(150), Some(7))
        );
        // A shorter idle wait than that stays the shorter.
        let brief = Duration::from_millis(5);
        assert_eq!(idle_move(due, brief, long_ago), (brief, Some(7)));
        let waiting = NextMove {
            due: None,
            when_idle: Some(9),
        };
        assert_eq!(idle_move(waiting, idle, long_ago), (idle, Some(9)));
        // Only a failed move waiting, not yet due: nothing moves.
        assert_eq!(idle_move(NextMove::default(), idle, long_ago), (idle, None));
    }

    #[test]
    fn a_change_runs_before_the_full_pass_it_finds_due_unless_that_is_overdue() {
        let resync = Duration::from_secs(2);
        let ms = Duration::from_millis;
        // Not due: a quick pass, nothing after it.
        assert_eq!(full_pass(ms(1999), resync, true, false), (false, false));
        assert_eq!(full_pass(ms(1999), resync, false, false), (false, false));
        // Due when a change woke the loop: the change's pass, then the full
        // one, up to half a period overdue.
        assert_eq!(full_pass(ms(2000), resync, true, false), (false, true));
        assert_eq!(full_pass(ms(2999), resync, true, false), (false, true));
        // Due when the timer woke the loop, as it does for one put off: now.
        assert_eq!(full_pass(ms(2000), resync, false, false), (true, false));
        // Half a period overdue: now, whatever woke the loop.
        assert_eq!(full_pass(ms(3000), resync, true, false), (true, false));
        // After a failed pass: now, due or not.
        assert_eq!(full_pass(ms(10), resync, true, true), (true, false));
        assert_eq!(full_pass(ms(2500), resync, true, true), (true, false));
    }

    #[test]
    fn a_change_runs_before_the_second_half_of_a_full_pass_unless_that_is_owed_half_a_period() {
        let resync = Duration::from_secs(2);
        let ms = Duration::from_millis;
        // Nothing else woke the loop: now.
        assert!(second_half_now(ms(0), ms(2000), resync, false));
        // A change did: its pass first, up to half a period.
        assert!(!second_half_now(ms(0), ms(2000), resync, true));
        assert!(!second_half_now(ms(999), ms(2999), resync, true));
        assert!(second_half_now(ms(1000), ms(3000), resync, true));
        // The first half ran half a period overdue: the maps' read is as
        // overdue, so it goes with the change.
        assert!(second_half_now(ms(0), ms(3000), resync, true));
    }
}
