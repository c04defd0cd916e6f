//! The syncer: the only writer of kernel state. It owns the loaded
//! programs, their attachments and the pinned maps, and brings them to the
//! compiler's desired state ([`Desired`]) in one [`Syncer::apply`] per pass.
//! It reads what the kernel holds, compares, and writes only the
//! differences: identities one by one, endpoints by a whole-policy swap
//! (atomic per endpoint, see `datapath`). Run on every change and
//! periodically, the same comparison repairs drift (an entry deleted or
//! changed behind the daemon's back).
//!
//! The order of one pass:
//! 0. Before the pass compiles, a veth new to it is handed to the attach
//!    thread (`linker`) for its TCX links ([`Syncer::link_ahead`]).
//! 1. TC programs onto veths that lack them (`links`): programs first, then
//!    policy, so a veth is never enforced with a half-written state. A
//!    fresh veth's TCX links are made on the attach thread instead, while
//!    the pass writes its policy: links made before the policy is written
//!    pass the veth's packets, as no program would, and its endpoints are
//!    reported not in force until a pass after both.
//! 2. The node deny list (`prefilter`), independent of everything else;
//!    then the pods' stale source prefixes out (`sources`; the new
//!    ones come in once the endpoints below are written).
//! 3. Stale prefilter pod denies out, then identities in (before the
//!    entries that name them), the endpoints' policies swapped, endpoints
//!    nothing holds removed, identities nothing names any more out, then
//!    the new pod denies in (`prefilter::in_order`, `endpoints`): the
//!    prefilter never drops what the policy in force allows.
//! 4. TC programs off veths nothing holds (`links`).
//! 5. The local pods' process and file rule sets (`lsm`), independent of
//!    the datapath: new sets whole, then each pod's swap, then unused sets
//!    out.
//!
//! A failed write is reported and leaves what it concerns on its last good
//! state; the rest is still applied, except after a failed retire of pod
//! denies, which stops every swap (see `prefilter`).

pub mod conntrack;
mod endpoints;

pub use endpoints::Written;
mod linker;
mod links;
pub use linker::LinkEnd;
pub use links::{Moved, NextMove};
pub mod lsm;
pub mod prefilter;
mod sources;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
};

use ipnet::IpNet;

use crate::{
    compile::desired::Desired,
    datapath::{DatapathError, DatapathMaps, lsm::LsmMaps},
    loader::features::Features,
    loader::{
        self, LoadError, Loaded, LsmObject,
        attach::{self, AttachError, TcHook},
        filter_helper::FilterHelper,
        sizes::MapSizes,
    },
    observe::programs::LsmPrograms,
    paths::PinDir,
};

/// What one pass changed, and what it could not do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The endpoint id of every endpoint written or checked, by name.
    pub endpoint_ids: BTreeMap<String, u32>,
    pub identities_written: usize,
    pub identities_removed: usize,
    /// Pods whose policy was (re)written.
    pub endpoints_written: Vec<String>,
    /// ifindexes no pod holds any more.
    pub endpoints_removed: Vec<u32>,
    /// Endpoints whose veth lacks a program (its attach failed), with the
    /// reason: their policy is in the maps, but nothing enforces it.
    pub not_enforced: BTreeMap<String, String>,
    /// Failed attaches and detaches (an attach failure also names its
    /// endpoint in `not_enforced`).
    pub attach_errors: Vec<String>,
    /// Map writes that failed; what they concern keeps its last state.
    pub errors: Vec<String>,
    /// Source prefixes written or removed (`sources`).
    pub source_prefixes_changed: usize,
    /// Source prefixes a pod was to have that could not be written, by
    /// `namespace/pod`: not in force.
    pub source_prefixes_unwritten: std::collections::BTreeSet<(String, ipnet::IpNet)>,
    /// Source prefixes a pod was to lose whose removal failed, by the
    /// `namespace/pod` holding their endpoint id: still in force.
    pub source_prefixes_left: std::collections::BTreeSet<(String, ipnet::IpNet)>,
    /// The process and file share; `None` where BPF LSM is inactive or the
    /// desired state had none.
    pub lsm: Option<lsm::LsmReport>,
}

impl Report {
    pub fn changed(&self) -> bool {
        self.identities_written + self.identities_removed > 0
            || !self.endpoints_written.is_empty()
            || !self.endpoints_removed.is_empty()
            || self.source_prefixes_changed > 0
            || self
                .lsm
                .as_ref()
                .is_some_and(|l| !l.pods_written.is_empty() || l.pods_removed > 0)
    }

    /// Everything desired is in force: every endpoint enforced, no map
    /// write failed. (A failed detach concerns no desired endpoint.)
    pub fn in_force(&self) -> bool {
        self.not_enforced.is_empty()
            && self.errors.is_empty()
            && self.lsm.as_ref().is_none_or(|l| l.errors.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Maps(Box<DatapathError>),
    #[error("XDP prefilter {0}")]
    Prefilter(#[from] AttachError),
}

impl From<DatapathError> for StartError {
    fn from(e: DatapathError) -> Self {
        Self::Maps(Box::new(e))
    }
}

/// The loaded programs, what they are attached to, and the maps they read.
pub struct Syncer {
    pins: PinDir,
    features: Features,
    loaded: Loaded,
    maps: DatapathMaps,
    /// Veths (ifindex) with both TC programs attached by this daemon, and
    /// how.
    attached: BTreeMap<u32, links::Via>,
    /// The process and file side, where BPF LSM is active; else why not.
    lsm: Result<lsm::LsmState, String>,
    /// The uplinks the prefilter is on, by ifindex.
    uplinks: BTreeMap<u32, String>,
    /// A daemon of another ABI left links (or filters, which may hold its
    /// programs), which this one takes over: its
    /// programs read new, empty maps, so the first pass fills them before
    /// it attaches anything (an endpoint missing from the map passes every
    /// packet, and an LSM program with no pod sets judges nothing).
    inherited: bool,
    /// What the last pass wrote, when it failed nothing.
    written: Option<Written>,
    /// How TC programs go onto veths beside TCX links (see `links`).
    tc: TcAttach,
    /// A veth's move from filters to links under way on its own thread.
    moving: Option<links::Moving>,
    /// The attach thread for new veths' TCX links, once started.
    linker: Option<linker::Linker>,
    /// What the attach thread failed, taken in between passes, for the
    /// next pass to report.
    made_errors: Vec<String>,
    /// Told when a move or a veth's links made off the loop has ended.
    ended: std::sync::Arc<tokio::sync::Notify>,
    /// Veths whose links failed on the attach thread: attached in the pass.
    link_failed: BTreeSet<u32>,
    /// The process that adds and removes clsact filters for this one on a
    /// TCX kernel, once started ([`Syncer::start_filter_helper`]).
    filter_helper: Option<std::sync::Arc<FilterHelper>>,
}

/// What the syncer does with clsact filters where the kernel has TCX.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcAttach {
    /// New veths get filters first, moved to links later (the default;
    /// not with `--tc-links-only`).
    pub filters_first: bool,
    /// Veths (ifindex) that carried a Palisade filter at start, without
    /// `filters_first`: the filter goes once the veth's links are in place.
    pub leftover_filters: BTreeSet<u32>,
    /// Some veth carried a Palisade filter at start: where another ABI's
    /// pins are there too, its programs may be in them, and this syncer
    /// takes that ABI over (see `inherited`).
    pub filters_found: bool,
}

impl Syncer {
    /// Loads (or adopts) the programs and maps and puts the XDP prefilter
    /// on `uplinks` with `node_denies` in force; `follows_routes`: uplinks
    /// may come later ([`Syncer::set_uplinks`]), so the prefilter loads
    /// even without one now. Runs in the node's network namespace.
    pub fn start(
        pins: PinDir,
        sizes: &MapSizes,
        uplinks: &[String],
        follows_routes: bool,
        node_denies: &[IpNet],
        tc: TcAttach,
    ) -> Result<Self, StartError> {
        // The daemon never attaches the XDP pod hook, and the prefilter
        // only to uplinks.
        let programs = loader::Programs {
            tc: true,
            prefilter: !uplinks.is_empty() || follows_routes,
            xdp_from_pod: false,
        };
        let (features, mut loaded) = loader::load_probed(&pins, sizes, programs)?;
        let mut maps = DatapathMaps::open(&pins)?;
        let uplinks = prefilter::install(&mut maps, &mut loaded.xdp, &pins, uplinks, node_denies)?;
        // Filters do not say whose programs they hold: with another ABI's
        // pins present, filters found are taken for that ABI's. Where they
        // are this ABI's own (a restart before their moves) beside a stale
        // older directory, the take-over costs one pass's order and that
        // directory, retired; the flows it carries are each judged again,
        // at their next packet, by the policy in force (`conntrack`).
        let other_abis = pins.other_abis();
        let inherited = other_abis
            .iter()
            .any(|old| fs::read_dir(old.links()).is_ok_and(|mut links| links.next().is_some()))
            || (tc.filters_found && !other_abis.is_empty());
        let lsm = match &mut loaded.lsm {
            LsmObject::Loaded(object) => {
                // Maps first: the programs judge nothing until a pod's sets
                // are written, so attaching them before that is safe, but
                // for a daemon whose programs still enforce (another ABI's).
                let state = lsm::LsmState::new(LsmMaps::open(&pins)?)?;
                if !inherited {
                    attach::attach_lsm(object, &pins)?;
                }
                Ok(state)
            }
            LsmObject::Skipped { reason } => Err(reason.clone()),
        };
        Ok(Self {
            pins,
            features,
            loaded,
            maps,
            attached: BTreeMap::new(),
            lsm,
            uplinks,
            inherited,
            written: None,
            tc,
            moving: None,
            linker: None,
            made_errors: Vec::new(),
            ended: Default::default(),
            link_failed: BTreeSet::new(),
            filter_helper: None,
        })
    }

    /// Moves the prefilter to exactly `uplinks` (the interfaces of the
    /// node's default routes, when they are followed): onto new ones first,
    /// then off the ones left. Returns what failed; an uplink that could
    /// not be attached is tried again at the next call.
    pub fn set_uplinks(&mut self, uplinks: &[(u32, String)]) -> Vec<String> {
        let mut errors = Vec::new();
        let mode = aya::programs::XdpMode::default();
        for (ifindex, name) in uplinks {
            if self.uplinks.contains_key(ifindex) {
                continue;
            }
            match attach::attach_xdp(&mut self.loaded.xdp, &self.pins, *ifindex, mode) {
                Ok(state) => {
                    tracing::info!("XDP prefilter on {name} (a default route's now): {state:?}");
                    self.uplinks.insert(*ifindex, name.clone());
                }
                Err(e) => errors.push(format!("XDP prefilter on {name}: {e}")),
            }
        }
        let keep: BTreeSet<u32> = uplinks.iter().map(|(i, _)| *i).collect();
        let gone: Vec<u32> = self
            .uplinks
            .keys()
            .filter(|i| !keep.contains(i))
            .copied()
            .collect();
        for ifindex in gone {
            let name = self.uplinks.remove(&ifindex).unwrap_or_default();
            match attach::detach_xdp(&self.pins, ifindex) {
                Ok(_) => tracing::info!("XDP prefilter off {name}: no default route uses it"),
                Err(e) => errors.push(format!("XDP prefilter off {name}: {e}")),
            }
        }
        errors
    }

    /// Makes the node's addresses which no pod may announce or send from
    /// (IPv6 link-local ones, its bridges' IPv4 ones IPv4-mapped: see
    /// `discover::node_addresses`) exactly `addresses`. Returns what failed.
    pub fn set_node_addresses(
        &mut self,
        addresses: &std::collections::BTreeSet<std::net::Ipv6Addr>,
    ) -> Vec<String> {
        self.maps
            .set_node_addresses(addresses)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The uplinks the prefilter is on.
    pub fn uplinks(&self) -> Vec<String> {
        self.uplinks.values().cloned().collect()
    }

    /// Why process and file rules are not enforced on this node, if not.
    pub fn lsm_inactive(&self) -> Option<&str> {
        self.lsm.as_ref().err().map(String::as_str)
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Descriptors of the LSM programs this daemon loaded, for the
    /// kernel's count of their skipped runs; `None` where BPF LSM is not
    /// enforcing.
    pub fn lsm_programs(&self) -> Option<std::io::Result<LsmPrograms>> {
        match (&self.lsm, &self.loaded.lsm) {
            (Ok(_), LsmObject::Loaded(object)) => Some(LsmPrograms::of(object)),
            _ => None,
        }
    }

    /// Whether the syncer may add or remove clsact filters after start on
    /// a kernel with TCX (`filters_first`, or leftover filters to remove),
    /// which needs `CAP_NET_ADMIN`.
    pub fn may_use_filters(&self) -> bool {
        self.tc.filters_first || !self.tc.leftover_filters.is_empty()
    }

    /// Whether this process itself needs `CAP_NET_ADMIN` after start for
    /// filters on a TCX kernel: it may use them, and no filter helper does
    /// it for this process.
    pub fn filters_need_net_admin(&self) -> bool {
        self.may_use_filters() && self.filter_helper.is_none()
    }

    /// Starts the filter helper (`loader::filter_helper`) where this
    /// syncer may add or remove clsact filters on a TCX kernel, and checks
    /// that it answers with the capability rtnetlink asks for. Call it
    /// before the daemon drops its capabilities. `Ok(None)` where no
    /// helper is wanted; an error where it could not start, and the
    /// daemon then keeps `CAP_NET_ADMIN` itself.
    pub fn start_filter_helper(&mut self) -> Result<Option<u32>, String> {
        if !self.features.tcx || !self.may_use_filters() {
            return Ok(None);
        }
        let mut fd =
            |hook| attach::tc_program_fd(&mut self.loaded.tc, hook).map_err(|e| e.to_string());
        let programs = [fd(TcHook::FromPod)?, fd(TcHook::ToPod)?];
        let helper = FilterHelper::spawn(programs)
            .map_err(|e| format!("starting the TC filter helper: {e}"))?;
        // Interface 0 is none: a request for it is refused for that
        // (ENODEV, taken as no filter) only once rtnetlink found the
        // capability (EPERM otherwise).
        helper
            .detach(0, TcHook::FromPod)
            .map_err(|e| format!("the TC filter helper's first request: {e}"))?;
        let pid = helper.pid();
        self.filter_helper = Some(std::sync::Arc::new(helper));
        Ok(Some(pid))
    }

    /// The filter helper's process, while it works.
    pub fn filter_helper(&self) -> Option<u32> {
        self.filter_helper
            .as_ref()
            .filter(|h| h.working())
            .map(|h| h.pid())
    }

    /// Whether new veths get clsact filters first: asked for, and either
    /// a working helper or this process's own capability to add them.
    fn filters_first(&self) -> bool {
        self.tc.filters_first && self.filter_helper.as_ref().is_none_or(|h| h.working())
    }

    /// Veths (ifindex) whose TC programs are clsact filters: on a kernel
    /// with TCX, new veths not yet moved to links (see `links`).
    pub fn on_filters(&self) -> Vec<u32> {
        self.attached
            .iter()
            .filter(|(_, via)| matches!(via, links::Via::Filters { .. }))
            .map(|(&ifindex, _)| ifindex)
            .collect()
    }

    /// Which veth on filters moves to TCX links next (see `links`).
    pub fn next_move(&self, at_latest: std::time::Duration) -> NextMove {
        links::next_move(self, at_latest)
    }

    /// Starts moving `ifindex` from clsact filters to TCX links on a
    /// thread of its own (see `links`); `Ok(false)` where a move is under
    /// way already or the veth is not on filters.
    pub fn start_move(&mut self, ifindex: u32) -> Result<bool, String> {
        links::start_move(self, ifindex)
    }

    /// The end of the move under way, once it has ended, or with `wait`
    /// once it ends (see `links`).
    pub fn finish_move(&mut self, wait: bool) -> Option<links::Moved> {
        links::finish_move(self, wait)
    }

    /// Told when work done off the loop (a move, a veth's links) has
    /// ended: the loop then takes it in.
    pub fn ended(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.ended.clone()
    }

    /// Starts the TCX links of those of `veths` (the veths a pass is about
    /// to hold) that have no programs yet, off the loop, as soon as the
    /// pass knows them rather than when it writes the desired state: the
    /// links' wait (an RCU grace period each) then runs beside the
    /// compile and the map writes. A veth the pass does not hold in the
    /// end goes once its links are made, as any veth nothing holds.
    pub fn link_ahead(&mut self, veths: impl IntoIterator<Item = u32>) {
        links::link_ahead(self, veths);
    }

    /// Whether new veths' TCX links are being made off the loop.
    pub fn linking(&self) -> bool {
        links::linking(self)
    }

    /// Takes in the veths whose TCX links were made off the loop, or
    /// failed, since the last call (failures go into the next pass's
    /// report); whether there were any, for a pass to say so.
    pub fn take_made(&mut self) -> bool {
        links::take_made(self)
    }

    /// The veth whose move to TCX links is under way, if any.
    pub fn moving(&self) -> Option<u32> {
        links::moving(self)
    }

    /// Brings the kernel to `desired` (see the module docs for the order).
    /// `Err` only when the maps cannot be read: the attachments may have
    /// been made by then, but no map entry was written after the failed
    /// read.
    pub fn apply(&mut self, desired: &Desired<'_>) -> Result<Report, DatapathError> {
        self.apply_with(desired, false)
    }

    /// [`Self::apply`], taking the identity and policy maps to hold what
    /// the last pass wrote when it failed nothing: only the differences
    /// from it are written, and the maps are not read unless an endpoint
    /// changed. For passes close behind another (a change of the source);
    /// `apply` reads everything and so repairs drift.
    pub fn apply_trusting(&mut self, desired: &Desired<'_>) -> Result<Report, DatapathError> {
        self.apply_with(desired, true)
    }

    fn apply_with(&mut self, desired: &Desired<'_>, trust: bool) -> Result<Report, DatapathError> {
        let written = std::mem::take(&mut self.written);
        let mut report = Report::default();
        if self.inherited {
            return self.take_over(desired);
        }
        links::settle(self, desired, &mut report);
        links::attach_new(self, desired, &mut report, true);
        let trusted = written.as_ref().filter(|_| trust);
        let expanded = write_maps(&mut self.maps, desired, &mut report, trusted)?;
        if report.errors.is_empty() {
            self.written = Some(Written::of(desired, expanded, written.as_ref()));
        }
        links::detach_unheld(self, desired, &mut report);
        if let (Ok(state), Some(lsm)) = (&mut self.lsm, desired.lsm) {
            report.lsm = Some(state.apply(lsm)?);
        }
        // Reported: the next pass need not say it again.
        self.made_errors.clear();
        Ok(report)
    }

    /// The first pass after another ABI's daemon: every map filled and its
    /// tracked flows and fragmented datagrams carried over (`conntrack`),
    /// then its links taken over,
    /// so no packet or operation meets empty maps.
    fn take_over(&mut self, desired: &Desired<'_>) -> Result<Report, DatapathError> {
        let mut report = Report::default();
        write_maps(&mut self.maps, desired, &mut report, None)?;
        if let (Ok(state), Some(lsm)) = (&mut self.lsm, desired.lsm) {
            report.lsm = Some(state.apply(lsm)?);
        }
        // Before the links: the older programs keep tracking until then.
        let stale = self.maps.epoch()?.wrapping_sub(1);
        let carried = conntrack::carry_over(&self.pins, stale);
        for (abi, flows) in &carried.flows {
            tracing::info!("carried {flows} tracked flows over from ABI v{abi}");
        }
        for (abi, datagrams) in &carried.datagrams {
            tracing::info!("carried {datagrams} fragmented datagrams over from ABI v{abi}");
        }
        // Not the desired state's: those flows are judged afresh instead.
        for e in &carried.errors {
            tracing::warn!("{e}");
        }
        links::attach_new(self, desired, &mut report, false);
        links::detach_unheld(self, desired, &mut report);
        if let (Ok(_), LsmObject::Loaded(object)) = (&self.lsm, &mut self.loaded.lsm)
            && let Err(e) = attach::attach_lsm(object, &self.pins)
        {
            report.attach_errors.push(format!("LSM programs: {e}"));
        }
        self.inherited = false;
        match attach::retire_other_abis(&self.pins) {
            Ok(retired) => {
                for dir in retired {
                    tracing::info!(
                        "retired {}: every link of that ABI was taken over",
                        dir.display()
                    );
                }
            }
            Err(e) => report
                .attach_errors
                .push(format!("retiring an older ABI's pins: {e}")),
        }
        Ok(report)
    }
}

/// The maps' share of [`Syncer::apply`], without attaching anything: the
/// privileged sync test drives it on ifindexes no interface has.
pub fn apply_maps(maps: &mut DatapathMaps, desired: &Desired<'_>) -> Result<Report, DatapathError> {
    let mut report = Report::default();
    write_maps(maps, desired, &mut report, None)?;
    Ok(report)
}

/// [`apply_maps`] as the daemon runs it: `written` is what the last call
/// wrote (kept only when it failed nothing); with `trust`, the maps are
/// taken to hold it (see [`Syncer::apply_trusting`]).
pub fn apply_maps_recorded(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    written: &mut Option<Written>,
    trust: bool,
) -> Result<Report, DatapathError> {
    let before = std::mem::take(written);
    let mut report = Report::default();
    let trusted = before.as_ref().filter(|_| trust);
    let expanded = write_maps(maps, desired, &mut report, trusted)?;
    if report.errors.is_empty() {
        *written = Some(Written::of(desired, expanded, before.as_ref()));
    }
    Ok(report)
}

fn write_maps(
    maps: &mut DatapathMaps,
    desired: &Desired<'_>,
    report: &mut Report,
    trusted: Option<&Written>,
) -> Result<endpoints::Expanded, DatapathError> {
    prefilter::keep_node_denies(maps, desired.node_denies, report);
    let prefixes = sources::retire(maps, desired, report)?;
    let mut pass = endpoints::Pass::read(maps, desired, report, trusted)?;
    prefilter::in_order(&mut pass)?;
    let expanded = pass.into_expanded();
    sources::add(maps, desired, &prefixes.held, report)?;
    sources::settle(maps, desired, &prefixes.moving, report)?;
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_its_programs_is_not_in_force() {
        let mut report = Report::default();
        assert!(report.in_force());
        report
            .not_enforced
            .insert("x/a".into(), "attaching to ifindex 7: refused".into());
        assert!(!report.in_force(), "a pod nothing enforces was ready");
        let failed_detach = Report {
            attach_errors: vec!["removing a pin: busy".into()],
            ..Report::default()
        };
        assert!(
            failed_detach.in_force(),
            "a detach concerns no desired endpoint"
        );
    }
}
