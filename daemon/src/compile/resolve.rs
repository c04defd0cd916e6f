//! Ordered rules (tiers, priorities, Deny, Pass, audit) into entries for a
//! datapath that knows only "the most specific entry wins".
//!
//! For one endpoint and direction: each peer some rule names (and the
//! any-peer wildcard) is cut into cells, protocol by protocol and port range
//! by port range, at every rule boundary. Each cell gets the verdict of the
//! first rule in evaluation order that covers it, computed once as enforced
//! and once with audit policies enforced too; where the two differ the cell
//! passes flagged as audit. A peer only gets entries where one of its own
//! rules covers the cell, so everything else still falls through to the
//! any-peer entries, exactly as the datapath looks things up.

use ebpf_common::datapath::{PolicyValue, action, identity, policy_flags};

use super::PolicyEntry;
use crate::model::{Policy, palisade::Action, policy::Tier};

/// One rule's entry with its place in the evaluation order.
#[derive(Clone, Debug)]
pub struct Raw {
    pub tier: Tier,
    pub priority: u32,
    pub action: Action,
    pub audit: bool,
    pub entry: PolicyEntry,
}

impl Raw {
    pub fn new(policy: &Policy, action: Action, entry: PolicyEntry) -> Self {
        Self {
            tier: policy.tier,
            priority: policy.priority,
            action,
            audit: policy.audit,
            entry,
        }
    }

    /// Evaluation order: tier, then priority, then Deny before Pass before
    /// Allow; the policy id only makes ties deterministic.
    fn order(&self) -> (Tier, u32, u8, u32) {
        (
            self.tier,
            self.priority,
            self.action.rank(),
            self.entry.value.policy,
        )
    }

    /// Whether the rule covers `protocol` (`None`: a protocol without
    /// ports, which only any-protocol rules cover) and `port`.
    fn covers(&self, protocol: Option<u8>, port: u16) -> bool {
        match (self.entry.protocol, protocol) {
            (None, _) => true,
            (Some(p), Some(q)) => {
                p == q && (self.entry.ports.0..=self.entry.ports.1).contains(&port)
            }
            (Some(_), None) => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Allow(u32),
    Deny(u32),
    DefaultDeny,
    Unenforced,
}

/// The first rule of `raws` (sorted) to decide the cell.
fn outcome(raws: &[&Raw], protocol: Option<u8>, port: u16, isolated: bool, audit: bool) -> Outcome {
    let mut passed = false;
    for r in raws {
        if (r.audit && !audit) || !r.covers(protocol, port) {
            continue;
        }
        match r.tier {
            Tier::Admin if passed => continue,
            // An isolated pod's default deny comes before the baseline.
            Tier::Baseline if isolated => break,
            _ => {}
        }
        match r.action {
            Action::Pass => passed = true,
            Action::Allow => return Outcome::Allow(r.entry.value.policy),
            Action::Deny => return Outcome::Deny(r.entry.value.policy),
        }
    }
    if isolated {
        Outcome::DefaultDeny
    } else {
        Outcome::Unenforced
    }
}

/// The entry value for a cell: the enforced verdict, unless it passes and
/// the audited reading drops, in which case it passes flagged as audit.
fn value(enforced: Outcome, audited: Outcome, audit_isolator: u32) -> PolicyValue {
    let v = |action, flags, policy| PolicyValue {
        action,
        flags,
        policy,
        ..PolicyValue::default()
    };
    match (enforced, audited) {
        (Outcome::Deny(p), _) => v(action::DENY, 0, p),
        (Outcome::DefaultDeny, _) => v(action::DENY, 0, 0),
        (_, Outcome::Deny(p)) => v(action::DENY, policy_flags::AUDIT, p),
        (_, Outcome::DefaultDeny) => v(action::DENY, policy_flags::AUDIT, audit_isolator),
        (Outcome::Allow(p), _) => v(action::ALLOW, 0, p),
        (Outcome::Unenforced, _) => v(action::ALLOW, 0, 0),
    }
}

const PROTOCOLS: [u8; 3] = [6, 17, 132];

/// Appends the resolved entries of one direction to `out`. `isolated`: an
/// enforced namespace-tier policy selects the pod for the direction;
/// `audit_isolator`: an audit one does (and which).
pub fn resolve(
    dir: u32,
    mut raws: Vec<Raw>,
    isolated: bool,
    audit_isolator: Option<u32>,
    out: &mut Vec<PolicyEntry>,
) {
    raws.sort_by_key(Raw::order);
    for peer in peers(&raws, audit_isolator) {
        let cells = PeerCells {
            dir,
            peer,
            raws: &raws,
            relevant: raws
                .iter()
                .filter(|r| r.entry.peer == peer || r.entry.peer == identity::ANY)
                .collect(),
            everything: peer == identity::ANY && audit_isolator.is_some(),
            isolated,
            audit_isolator,
        };
        cells.entries(out);
    }
}

/// Every peer some rule names, and the any-peer wildcard where an audit
/// policy would isolate.
fn peers(raws: &[Raw], audit_isolator: Option<u32>) -> Vec<u32> {
    let mut peers: Vec<u32> = raws.iter().map(|r| r.entry.peer).collect();
    if audit_isolator.is_some() {
        // The would-be default deny covers every cell of the any-peer entry.
        peers.push(identity::ANY);
    }
    peers.sort_unstable();
    peers.dedup();
    peers
}

/// The cells of one peer, in one direction, and the rules that decide them.
struct PeerCells<'a> {
    dir: u32,
    peer: u32,
    /// Every rule, in evaluation order.
    raws: &'a [Raw],
    /// The peer's own rules and the any-peer ones, in evaluation order.
    relevant: Vec<&'a Raw>,
    /// The peer has every cell (the any-peer wildcard under an audit isolator).
    everything: bool,
    isolated: bool,
    audit_isolator: Option<u32>,
}

impl PeerCells<'_> {
    /// The peer's entries: protocols without ports first, then each
    /// protocol's port ranges.
    fn entries(&self, out: &mut Vec<PolicyEntry>) {
        // Protocols without ports: only any-protocol rules reach them.
        let other = self.own(None, 0).then(|| self.decide(None, 0));
        if let Some(v) = other {
            out.push(self.entry(None, (0, 65535), v));
        }
        for protocol in PROTOCOLS {
            self.protocol_entries(protocol, other, out);
        }
    }

    /// One protocol's port ranges, cut at every rule boundary; `other` is
    /// what the peer's any-protocol entry already says.
    fn protocol_entries(
        &self,
        protocol: u8,
        other: Option<PolicyValue>,
        out: &mut Vec<PolicyEntry>,
    ) {
        let mut cuts = vec![0u32, 65536];
        for r in self
            .relevant
            .iter()
            .filter(|r| r.entry.protocol == Some(protocol))
        {
            cuts.push(u32::from(r.entry.ports.0));
            cuts.push(u32::from(r.entry.ports.1) + 1);
        }
        cuts.sort_unstable();
        cuts.dedup();
        // Adjacent cells with the same verdict merge into one range.
        let mut run: Option<(u16, u16, PolicyValue)> = None;
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
            let cell = self
                .own(Some(protocol), lo)
                .then(|| self.decide(Some(protocol), lo))
                // The any-protocol entry of this peer already says it.
                .filter(|v| Some(*v) != other);
            match (run, cell) {
                (Some((first, _, rv)), Some(v)) if rv == v => run = Some((first, hi, v)),
                (_, cell) => {
                    if let Some((first, last, rv)) = run {
                        out.push(self.entry(Some(protocol), (first, last), rv));
                    }
                    run = cell.map(|v| (lo, hi, v));
                }
            }
        }
        if let Some((first, last, rv)) = run {
            out.push(self.entry(Some(protocol), (first, last), rv));
        }
    }

    /// Whether one of the peer's own rules covers the cell: only those
    /// cells get an entry, the rest fall through to the any-peer entries.
    fn own(&self, protocol: Option<u8>, port: u16) -> bool {
        self.everything
            || self
                .raws
                .iter()
                .any(|r| r.entry.peer == self.peer && r.covers(protocol, port))
    }

    /// The cell's value, enforced and with audit policies enforced too.
    fn decide(&self, protocol: Option<u8>, port: u16) -> PolicyValue {
        let audited_isolation = self.isolated || self.audit_isolator.is_some();
        value(
            outcome(&self.relevant, protocol, port, self.isolated, false),
            outcome(&self.relevant, protocol, port, audited_isolation, true),
            self.audit_isolator.unwrap_or(0),
        )
    }

    fn entry(&self, protocol: Option<u8>, ports: (u16, u16), value: PolicyValue) -> PolicyEntry {
        PolicyEntry {
            direction: self.dir,
            peer: self.peer,
            protocol,
            ports,
            value,
        }
    }
}
