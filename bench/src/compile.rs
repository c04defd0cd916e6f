//! Compile time of the policy engine at 100, 1k and 10k pods by 100, 1k and
//! 10k policies, and the cost of one pod's label change: a full recompile
//! plus the diff that finds the endpoints it touches, against the
//! incremental compiler, which yields the touched endpoints itself. The
//! compiler is pure, so this needs no privileges.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use palisade::{
    compile::{compile, incremental::Incremental},
    model::{
        LabelSelector, Namespace, NetworkPolicy, Pod, Policy, Snapshot,
        networkpolicy::{IngressRule, NetworkPolicySpec, ObjectMeta, Peer, PolicyPort, PortRef},
    },
};

const NAMESPACES: usize = 50;
const APPS: usize = 20;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn snapshot(pods: usize, policies: usize) -> Snapshot {
    let mut s = Snapshot::default();
    for n in 0..NAMESPACES {
        let name = format!("ns{n}");
        s.namespaces.insert(
            name.clone(),
            Namespace {
                name,
                labels: labels(&[("team", format!("t{}", n % 5))]),
                annotations: Default::default(),
            },
        );
    }
    for i in 0..pods {
        s.pods.push(
            Pod {
                namespace: format!("ns{}", i % NAMESPACES),
                name: format!("pod{i}"),
                labels: labels(&[
                    ("app", format!("app{}", i % APPS)),
                    ("tier", format!("tier{}", i % 3)),
                ]),
                ips: vec![IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i as u32 + 1))],
                ports: Vec::new(),
                cgroup: None,
                source_check: palisade::model::SourceCheck::On,
                source_prefixes: palisade::model::SourcePrefixes::None,
            }
            .into(),
        );
    }
    for j in 0..policies {
        let selector = |key: &str, value: String| LabelSelector {
            match_labels: labels(&[(key, value)]),
            ..LabelSelector::default()
        };
        s.policies.push(
            Policy::from(&NetworkPolicy {
                api_version: "networking.k8s.io/v1".into(),
                kind: "NetworkPolicy".into(),
                metadata: ObjectMeta {
                    name: format!("p{j}"),
                    namespace: Some(format!("ns{}", j % NAMESPACES)),
                    ..ObjectMeta::default()
                },
                spec: NetworkPolicySpec {
                    pod_selector: selector("app", format!("app{}", j % APPS)),
                    policy_types: None,
                    ingress: vec![IngressRule {
                        from: vec![Peer {
                            namespace_selector: Some(selector("team", format!("t{}", j % 5))),
                            pod_selector: Some(selector("tier", format!("tier{}", j % 3))),
                            ip_block: None,
                        }],
                        ports: vec![PolicyPort {
                            protocol: None,
                            port: Some(PortRef::Number(8000 + (j % 100) as i64)),
                            end_port: None,
                        }],
                        ..IngressRule::default()
                    }],
                    egress: Vec::new(),
                },
                status: None,
            })
            .into(),
        );
    }
    s
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

pub fn report() {
    if let Err(e) = lsm_report() {
        println!("LSM compile: {e:#}");
    }
    println!();
    println!(
        "policy compile (pure): full compile; one pod's label change by full recompile + diff, and incremental:"
    );
    println!(
        "{:>6} {:>8} | {:>10} {:>12} {:>14} | {:>10} {:>10} {:>8} | {:>12} {:>8} {:>9}",
        "pods",
        "policies",
        "compile",
        "entries",
        "heap peak/kept",
        "relabel",
        "diff",
        "touched",
        "incremental",
        "touched",
        "state"
    );
    for pods in [100, 1_000, 10_000] {
        for policies in [100, 1_000, 10_000] {
            // 10k x 10k takes minutes with a full recompile: measured only
            // up to 10k x 1k, the incremental target.
            if pods * policies > 10_000_000 {
                println!("{pods:>6} {policies:>8} | skipped (over 10M pod x policy pairs)");
                continue;
            }
            let mut s = snapshot(pods, policies);
            let (mut inc, _, state) = crate::heap::measure(|| Incremental::new(s.clone()));
            let moved: BTreeMap<String, String> = [
                ("app".to_owned(), "app-moved".to_owned()),
                ("tier".to_owned(), "tier0".to_owned()),
            ]
            .into();
            let mut relabelled = s.clone();
            std::sync::Arc::make_mut(&mut relabelled.pods[0]).labels = moved.clone();
            let relabelled = std::sync::Arc::new(relabelled);
            let (change, incremental_time) = timed(|| inc.update(relabelled.clone()));
            let ((before, compile_time), peak, kept) =
                crate::heap::measure(|| timed(|| compile(&s)));
            let entries: usize = before.endpoints.values().map(|e| e.entries.len()).sum();
            std::sync::Arc::make_mut(&mut s.pods[0])
                .labels
                .insert("app".into(), "app-moved".into());
            let (after, relabel_time) = timed(|| compile(&s));
            let (touched, diff_time) = timed(|| {
                after
                    .endpoints
                    .iter()
                    .filter(|(k, v)| before.endpoints.get(*k) != Some(v))
                    .count()
            });
            assert_eq!(s.pods[0].labels, moved, "the same change both ways");
            assert!(
                inc.compiled() == &after,
                "the incremental state differs from a full compile"
            );
            let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
            println!(
                "{pods:>6} {policies:>8} | {:>8.1} ms {entries:>12} {:>6.1}/{:>5.1} MiB | {:>7.1} ms {:>7.2} ms {touched:>8} | {:>9.2} ms {:>8} {:>5.1} MiB{}",
                compile_time.as_secs_f64() * 1e3,
                mib(peak),
                mib(kept),
                relabel_time.as_secs_f64() * 1e3,
                diff_time.as_secs_f64() * 1e3,
                incremental_time.as_secs_f64() * 1e3,
                change.endpoints.len(),
                mib(state),
                if change.full { " (full)" } else { "" }
            );
        }
    }
}

/// A pod's file section of `paths` blocked files, spread over directories
/// three deep, and 16 audited patterns (a set's room): what the LSM
/// compiler resolves per pod, the guards of every directory above a
/// blocked file included.
fn lsm_policy(paths: usize) -> String {
    let paths: Vec<String> = (0..paths)
        .map(|i| format!("/srv/a{}/b{}/c{}/f{i}", i % 7, i % 53, i % 211))
        .collect();
    let patterns: Vec<String> = (0..16).map(|i| format!("/home/*/p{i}/*.key")).collect();
    format!(
        "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {{name: bench-lsm, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: []
  file:
    rules:
    - {{action: Block, paths: [{}]}}
    - {{action: Audit, patterns: [{}]}}
",
        paths.join(", "),
        patterns.join(", ")
    )
}

/// The LSM compile of one selected pod's rules, median of 5.
pub fn lsm_report() -> anyhow::Result<()> {
    use palisade::{
        compile::lsm::compile_lsm,
        model::{parse::parse_documents, standard},
    };
    println!();
    println!("LSM compile (pure), one pod's file rules and 16 patterns, median of 5:");
    for paths in [100, 1_000, 10_000] {
        let mut s = standard::snapshot();
        for p in &mut s.pods {
            let p = std::sync::Arc::make_mut(p);
            p.cgroup = (p.key() == "x/a").then(|| "/bench/a".to_owned());
        }
        for d in parse_documents(&lsm_policy(paths), "bench.yaml", "x") {
            let d = d.map_err(|e| anyhow::anyhow!("the bench's policy: {e}"))?;
            s.policies.push(d.policy().into());
        }
        let mut times = Vec::new();
        let mut entries = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let d = compile_lsm(&s);
            times.push(t.elapsed());
            entries = d
                .pods
                .get("x/a")
                .and_then(|r| r.file.as_ref())
                .map_or(0, |f| f.entries.len());
        }
        times.sort();
        println!(
            "{paths:>6} paths: {:>8.2} ms, {entries} trie entries (directory-name guards included)",
            times[2].as_secs_f64() * 1e3
        );
    }
    Ok(())
}
