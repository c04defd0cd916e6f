//! The metrics endpoint: Prometheus text from `metrics-exporter-prometheus`.
//!
//! Kernel counters are not mirrored continuously: a scrape reads the pinned
//! per-CPU maps, sums them and sets each counter to that absolute value, so
//! they stay monotonic across daemon restarts that keep the pins. The
//! daemon's own figures (reconcile time, change-to-in-force, errors) are
//! recorded as they happen.
//!
//! Labels: `direction`, `reason` (the names in `ebpf_common::reason`),
//! `policy` (`namespace/name`, `palisade:namespace/name`, `cluster:name`,
//! `default-deny` for the default deny of an isolated pod, `none` where no
//! policy decided, e.g. a reply). Per-pod labels only with
//! `--metrics-pod-labels N`: the first N pods by name get their own `pod`
//! label, the rest share `pod="other"`, so a node's series stay bounded.

pub mod kernel;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ebpf_common::{
    maps::{CT, LSM_STATS, TC_STATS, XDP_STATS},
    reason,
};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    loader::features::Features,
    observe::{
        names::{Names, SharedNames, lock},
        programs::LsmPrograms,
        stats::{self, direction_name},
    },
    paths::PinDir,
};

/// Seconds: from a millisecond to half a minute.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    handle: PrometheusHandle,
    pins: PinDir,
    names: SharedNames,
    pod_label_cap: Option<usize>,
    lsm_programs: Option<LsmPrograms>,
}

/// Whether a verdict reason passes the packet (the rest drop it; audit
/// and bookkeeping reasons are apart).
fn verdict_kind(code: u32) -> Option<&'static str> {
    match code {
        reason::AUDIT_WOULD_DROP => Some("audit"),
        reason::EVENT_LOST | reason::EVENT_RATE_LIMITED | reason::COUNTER_MAP_FULL => None,
        c if reason::name(c).starts_with("drop_") => Some("drop"),
        _ => Some("allow"),
    }
}

fn describe() {
    describe_counter!(
        "palisade_drops_total",
        "Packets dropped by the pod datapath, by direction, reason and policy."
    );
    describe_counter!(
        "palisade_allows_total",
        "Packets passed by the pod datapath, by direction, reason and policy."
    );
    describe_counter!(
        "palisade_audit_would_drop_total",
        "Packets an audit-mode policy would have dropped (they passed), by direction and policy."
    );
    describe_counter!(
        "palisade_datapath_packets_total",
        "Every verdict of each program family (tc, xdp), by direction and reason."
    );
    describe_counter!(
        "palisade_lsm_operations_total",
        "Operations the BPF-LSM programs saw, by reason (pass_unenforced: execs no process rule set judges)."
    );
    describe_counter!(
        "palisade_lsm_decisions_total",
        "Block and Audit decisions on processes and files, by hook, action and policy (posture: a section's default)."
    );
    describe_counter!(
        "palisade_lsm_runs_skipped_total",
        "Runs of an LSM program the kernel did not make (its recursion guard, met when a run is preempted and another task reaches the hook): each an operation that passed unjudged."
    );
    describe_gauge!(
        "palisade_policy_not_enforced",
        "1 for a policy with process or file rules this node does not enforce, in whole or in part (palisade status says why)."
    );
    describe_gauge!(
        "palisade_lsm_pods",
        "Local pods with process or file rules, by state (in_force, not_enforced)."
    );
    describe_counter!(
        "palisade_events_lost_total",
        "Drop and audit events not sent: the per-CPU rate limit, or a full ring buffer."
    );
    describe_gauge!("palisade_map_entries", "Entries in use in a pinned map.");
    describe_gauge!(
        "palisade_map_capacity",
        "Configured entries of a pinned map."
    );
    describe_gauge!(
        "palisade_conntrack_entries",
        "Tracked flows, one entry each whatever its local ends (the LRU map evicts the least recently used when full; an entry whose ends a policy change cut counts until then)."
    );
    describe_counter!(
        "palisade_conntrack_insert_failures_total",
        "Flows passed but not tracked: the conntrack map refused the entry."
    );
    describe_histogram!(
        "palisade_reconcile_duration_seconds",
        "One reconcile pass: read, compile, discover, attach, sync."
    );
    describe_histogram!(
        "palisade_change_to_in_force_seconds",
        "From a source change being noticed to the pass that put it in force."
    );
    describe_counter!(
        "palisade_errors_total",
        "Errors by kind: source (a bad object, its last good version kept), attach, write."
    );
    describe_gauge!(
        "palisade_source_errors",
        "Objects of the source currently refused."
    );
    describe_gauge!("palisade_policies", "Policies in the source.");
    describe_gauge!("palisade_endpoints", "Local pods enforced.");
    describe_gauge!(
        "palisade_quarantined_veths",
        "Pod-like veths whose pod is not known yet (they pass nothing)."
    );
    describe_gauge!(
        "palisade_ready",
        "1 when the last pass put the source fully in force."
    );
    describe_gauge!(
        "palisade_source_up",
        "1 when the source has been read whole and every watch runs; 0 while it waits for its first lists or a watch fails (the last good state stays in force)."
    );
    describe_counter!(
        "palisade_source_watch_errors_total",
        "Failures of the Kubernetes source's watches, by resource (each retried with backoff)."
    );
    describe_gauge!(
        "palisade_kernel_feature",
        "Kernel features Palisade relies on (1 present and used, 0 not)."
    );
}

impl Metrics {
    /// Installs the process-wide recorder (once per process).
    pub fn install(
        pins: PinDir,
        features: &Features,
        pod_label_cap: Option<usize>,
        names: SharedNames,
        lsm_programs: Option<LsmPrograms>,
    ) -> anyhow::Result<Arc<Self>> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)
            .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
        describe();
        let feature = |name: &'static str, on: bool| {
            gauge!("palisade_kernel_feature", "feature" => name).set(if on { 1.0 } else { 0.0 });
        };
        feature("bpf_lsm", features.bpf_lsm.is_active());
        feature("tcx", features.tcx);
        feature("btf", features.btf);
        Ok(Arc::new(Self {
            handle,
            pins,
            names,
            pod_label_cap,
            lsm_programs,
        }))
    }

    /// The exposition text, with the kernel's counters read just now.
    pub fn render(&self) -> String {
        if let Err(e) = self.refresh() {
            tracing::warn!("metrics: reading kernel counters: {e}");
        }
        self.handle.render()
    }

    fn refresh(&self) -> anyhow::Result<()> {
        self.verdict_counters()?;
        self.datapath_counters();
        self.lsm_decisions();
        self.lsm_runs_skipped();
        self.map_gauges();
        Ok(())
    }

    /// Drops, allows and audited would-be drops from the kernel's counters,
    /// by direction, policy, reason and (when labelled) pod.
    fn verdict_counters(&self) -> anyhow::Result<()> {
        // Read before the names are locked: the reconcile loop takes them
        // after each pass.
        let details = kernel::details(&self.pins)?;
        let names = lock(&self.names);
        let policy = |d: &kernel::Detail| names.policy(d.policy, d.reason);
        let labelled = self.labelled_pods(&names);
        let pod = |d: &kernel::Detail| {
            self.pod_label_cap
                .map(|_| match names.endpoint(d.endpoint) {
                    Some(p) if labelled.contains(p) => p.clone(),
                    _ => "other".to_owned(),
                })
        };
        let sums = kernel::sum_by(&details, |d| {
            Some((
                verdict_kind(d.reason)?,
                d.direction,
                d.reason,
                policy(d),
                pod(d),
            ))
        });
        for ((kind, direction, code, policy, pod), (packets, _)) in sums {
            let mut labels = vec![
                ("direction", direction_name(direction).to_owned()),
                ("policy", policy),
            ];
            if kind != "audit" {
                labels.push(("reason", reason::name(code).to_owned()));
            }
            if let Some(pod) = pod {
                labels.push(("pod", pod));
            }
            let name = match kind {
                "drop" => "palisade_drops_total",
                "audit" => "palisade_audit_would_drop_total",
                _ => "palisade_allows_total",
            };
            counter!(name, &labels).absolute(packets);
        }
        Ok(())
    }

    /// The kernel's own count, per program: runs it did not make.
    fn lsm_runs_skipped(&self) {
        for (program, skipped) in self.lsm_programs.iter().flat_map(LsmPrograms::runs_skipped) {
            match skipped {
                Ok(n) => {
                    counter!("palisade_lsm_runs_skipped_total", "program" => program).absolute(n)
                }
                // The status's `lsm` says so at every pass; a warning at
                // every scrape would flood the log.
                Err(e) => tracing::debug!("metrics: skipped runs of {program}: {e}"),
            }
        }
    }

    /// Block and Audit decisions by hook, action and deciding policy.
    fn lsm_decisions(&self) {
        let Ok(rows) = kernel::lsm_decisions(&self.pins) else {
            // Where BPF LSM is inactive the map was never pinned.
            return;
        };
        let names = lock(&self.names);
        let mut sums: BTreeMap<(&str, &str, String), u64> = BTreeMap::new();
        for (key, n) in rows {
            let hook = ebpf_common::lsm::hook_name(key.hook);
            let action = if key.action == ebpf_common::lsm::action::BLOCK {
                "block"
            } else {
                "audit"
            };
            let default = key.flags & ebpf_common::lsm::verdict_flags::DEFAULT != 0;
            *sums
                .entry((hook, action, names.lsm_policy(key.policy, default)))
                .or_default() += n;
        }
        for ((hook, action, policy), n) in sums {
            counter!("palisade_lsm_decisions_total", "hook" => hook, "action" => action, "policy" => policy)
                .absolute(n);
        }
    }

    /// The pods that get a `pod` label of their own (the first by name, up
    /// to the cap); the others count as `other`. None without a cap.
    fn labelled_pods<'a>(&self, names: &'a Names) -> BTreeSet<&'a String> {
        match self.pod_label_cap {
            Some(cap) => {
                let mut pods: Vec<&String> = names.endpoint_names().collect();
                pods.sort();
                pods.into_iter().take(cap).collect()
            }
            None => BTreeSet::new(),
        }
    }

    /// Each program's packet (or LSM decision) counters by reason, and the
    /// losses they report: events lost or rate-limited, conntrack inserts
    /// that failed.
    fn datapath_counters(&self) {
        let mut lost = [0u64; 2];
        let mut ct_failures = 0;
        for (program, map) in [("tc", TC_STATS), ("xdp", XDP_STATS), ("lsm", LSM_STATS)] {
            let Ok(rows) = stats::read_pinned(&self.pins.map(map)) else {
                continue;
            };
            for row in rows {
                match row.reason {
                    "event_lost" => lost[0] += row.events,
                    "event_rate_limited" => lost[1] += row.events,
                    "ct_map_full" => ct_failures += row.events,
                    _ => {}
                }
                if program == "lsm" {
                    counter!("palisade_lsm_operations_total", "reason" => row.reason)
                        .absolute(row.events);
                } else {
                    counter!(
                        "palisade_datapath_packets_total",
                        "program" => program,
                        "direction" => row.direction,
                        "reason" => row.reason
                    )
                    .absolute(row.events);
                }
            }
        }
        counter!("palisade_events_lost_total", "cause" => "ring_full").absolute(lost[0]);
        counter!("palisade_events_lost_total", "cause" => "rate_limited").absolute(lost[1]);
        counter!("palisade_conntrack_insert_failures_total").absolute(ct_failures);
    }

    /// How full each pinned map is, and the connections conntrack tracks.
    fn map_gauges(&self) {
        let mut tracked = 0;
        for p in kernel::pressure(&self.pins) {
            gauge!("palisade_map_entries", "map" => p.name).set(p.entries as f64);
            gauge!("palisade_map_capacity", "map" => p.name).set(p.capacity as f64);
            if CT.contains(&p.name) {
                tracked += p.entries;
            }
        }
        gauge!("palisade_conntrack_entries").set(tracked as f64);
    }
}

/// Every metric the daemon exports (histograms add `_bucket`, `_sum`, `_count`).
pub const EXPORTED: &[&str] = &[
    "palisade_drops_total",
    "palisade_allows_total",
    "palisade_audit_would_drop_total",
    "palisade_datapath_packets_total",
    "palisade_lsm_decisions_total",
    "palisade_events_lost_total",
    "palisade_map_entries",
    "palisade_map_capacity",
    "palisade_conntrack_entries",
    "palisade_conntrack_insert_failures_total",
    "palisade_reconcile_duration_seconds",
    "palisade_change_to_in_force_seconds",
    "palisade_errors_total",
    "palisade_source_errors",
    "palisade_policies",
    "palisade_endpoints",
    "palisade_quarantined_veths",
    "palisade_ready",
    "palisade_source_up",
    "palisade_kernel_feature",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("palisade_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            out.insert(name);
        }
        out
    }

    #[test]
    fn every_exported_metric_is_recorded_and_the_dashboard_queries_only_those() {
        let sources = [include_str!("mod.rs"), include_str!("../../node/agent.rs")].concat();
        for name in EXPORTED {
            // Listed here, described, and recorded at least once.
            assert!(
                sources.matches(&format!("\"{name}\"")).count() >= 3,
                "{name} is listed but not both described and recorded"
            );
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../../manifests/grafana/palisade.json"))
                .expect("the dashboard is JSON");
        let mut queried = BTreeSet::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                queried.extend(names_in(target["expr"].as_str().expect("expr")));
            }
        }
        assert!(queried.len() > 10, "{queried:?}");
        for name in &queried {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                EXPORTED.contains(&base),
                "the dashboard queries {name}, which the daemon does not export"
            );
        }
    }
}
