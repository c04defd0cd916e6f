//! Fuzzing, within the budget of the normal test run (`mutate::fuzz_cases`;
//! `PALISADE_FUZZ_CASES=50x cargo test -p palisade --lib fuzz` for a long
//! run), of the policy parsers of every kind and of the compiler on what
//! they accept: random bytes, random YAML- and JSON-shaped text, mutations
//! of valid documents of every kind, and every truncation of them.
//!
//! The property, for any input: no panic; the file's bytes are refused
//! whole (size, UTF-8, documents) or each document is accepted or refused
//! with an error that names the file and says something; an accepted
//! document parses again to the same thing, and so does its JSON form (the
//! Kubernetes source's: the API server's object as JSON, `source/kube/
//! policies.rs`); the compiler (network and process/file rules) takes what
//! was accepted without panicking. A failure shrinks (see `mutate.rs`) and
//! replays (the runner is seeded).
//!
//! Found so far: no crash and no wrong refusal, in the budget and in a
//! long run (`PALISADE_FUZZ_CASES=50x`: 30,000 mutations, 15,000 shaped
//! texts, 30,000 random byte strings, every truncation of every seed,
//! 12,500 files of accepted policies compiled).
//! The two mismatches the JSON-form check met were its own (a YAML 1.1
//! word such as `y` read as a boolean into JSON, a float written two ways;
//! see [`as_json_the_same`]).

use std::cell::Cell;

use proptest::{collection::vec, prelude::*, test_runner::TestCaseError};

use super::{
    Snapshot,
    limits::check_file,
    mutate::{Choices, fuzz_cases, mutant, shaped},
    parse::{parse_one, split_documents},
    standard, yaml,
};
use crate::compile::{compile, lsm::compile_lsm, property::check};

const FILE: &str = "fuzz.yaml";

/// Valid documents of every kind, every field used somewhere.
pub const SEEDS: &[&str] = &[
    include_str!("../../../manifests/examples/policies/x-a-web-from-y.yaml"),
    include_str!("../../../manifests/examples/policies/x-deny-y-c.yaml"),
    include_str!("../../../manifests/examples/policies/z-egress-to-x-only.yaml"),
    "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x, labels: {a: b}, annotations: {c: d}, uid: 1, resourceVersion: \"7\"}
spec:
  podSelector:
    matchLabels: {pod: a}
    matchExpressions:
    - {key: tier, operator: In, values: [web, db]}
    - {key: debug, operator: DoesNotExist}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
      namespaceSelector: {matchLabels: {ns: y}}
    - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}
    ports:
    - {protocol: TCP, port: 80}
    - {protocol: UDP, port: serve-81-udp}
    - {port: 8000, endPort: 8080}
  egress:
  - to: [{ipBlock: {cidr: 'fd00::/64'}}]
    ports: [{protocol: SCTP, port: 81}]
status: {}
",
    "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: pnp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  priority: 500
  mode: Audit
  policyTypes: [Ingress]
  ingress:
  - action: Deny
    from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
  egress:
  - action: Allow
    to: [{namespaceSelector: {}}]
  process:
    posture: Allowlist
    rules:
    - {action: Allow, dirs: [{path: /usr/bin/, recursive: true}], patterns: ['/opt/**/bin/*'], ownerOnly: true}
    - {action: Block, paths: [/bin/sh], fromSource: [/usr/bin/env]}
  file:
    posture: Denylist
    rules:
    - {action: Block, paths: [/etc/shadow], fromSource: [/usr/bin/cat], readOnly: true}
    - {action: Audit, dirs: [{path: /var/log/}], patterns: [/tmp/?.txt]}
",
    "apiVersion: palisade.dev/v1alpha1
kind: PalisadeClusterNetworkPolicy
metadata: {name: admin}
spec:
  tier: Admin
  priority: 10
  mode: Enforce
  subject:
    namespaceSelector: {matchLabels: {ns: x}}
    podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}
  ingress:
  - action: Pass
    from: [{namespaceSelector: {matchLabels: {ns: y}}}]
  egress:
  - action: Deny
    to: [{ipBlock: {cidr: 192.0.2.0/24}}]
    ports: [{protocol: TCP, port: 443}]
  file:
    rules: [{action: Block, paths: [/etc/passwd]}]
",
    "apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata:
  name: ksp
  namespace: x
spec:
  severity: 7
  message: lockdown
  tags: [MITRE, T1059]
  selector:
    matchLabels: {pod: a}
    matchExpressions:
    - {key: label, operator: In, values: [tier=frontend, tier=web]}
    - {key: label, operator: NotIn, values: [debug=true]}
  process:
    severity: 9
    matchPaths:
    - path: /bin/bash
    - {path: /usr/bin/apt, action: Audit}
    matchDirectories:
    - {dir: /sbin/, recursive: true}
    matchPatterns:
    - pattern: /**/nc*
  file:
    matchPaths:
    - path: /var/www/html/wp-config.php
      fromSource: [{path: /usr/sbin/apache2}]
      readOnly: true
      action: Allow
    - {path: /etc/shadow, ownerOnly: true}
    matchDirectories:
    - {dir: /usr/bin/, recursive: true, readOnly: true, message: read-only}
  action: Block
",
];

/// The standard model with cgroups, so that process and file rules
/// compile too.
fn cluster() -> Snapshot {
    let mut s = standard::snapshot();
    for (i, pod) in s.pods.iter_mut().enumerate() {
        std::sync::Arc::make_mut(pod).cgroup = Some(format!("/sys/fs/cgroup/pod{i}"));
    }
    s
}

/// The property (module docs) for a file of `bytes`.
pub fn parses_cleanly(bytes: &[u8]) -> Result<(), TestCaseError> {
    parses_cleanly_then(bytes, true).map(drop)
}

/// [`parses_cleanly`], with the JSON form and the compiler only when
/// `deep`; how many documents were accepted.
fn parses_cleanly_then(bytes: &[u8], deep: bool) -> Result<usize, TestCaseError> {
    let text = match check_file(bytes) {
        Ok(text) => text,
        Err(e) => {
            prop_assert!(!e.is_empty());
            return Ok(0);
        }
    };
    let mut accepted = Vec::new();
    for (start, doc) in split_documents(text) {
        match parse_one(&doc, start, FILE, "x") {
            Err(e) => {
                prop_assert!(!e.message.trim().is_empty(), "an empty error for {doc:?}");
                let shown = e.to_string();
                let named = format!("{}:{}", FILE, e.line);
                prop_assert!(
                    shown.starts_with(&named),
                    "{} does not start with {}",
                    shown,
                    named
                );
                prop_assert!(e.line >= start, "{e} before its document's line {start}");
            }
            Ok(d) => {
                let again = parse_one(&doc, start, FILE, "x");
                prop_assert_eq!(again.as_ref(), Ok(&d), "parsed twice, differently");
                if deep {
                    as_json_the_same(&doc)?;
                }
                accepted.push(d.policy());
            }
        }
    }
    let count = accepted.len();
    if deep && count > 0 {
        let mut s = cluster();
        s.policies = accepted.into_iter().map(std::sync::Arc::new).collect();
        compile(&s);
        compile_lsm(&s);
    }
    Ok(count)
}

/// Values each field may take, valid or nearly: mutations with them keep
/// most documents acceptable, so that the compiler sees policies of every
/// shape (the other mutations break most documents).
const VALUES: &[(&str, &[&str])] = &[
    (
        "port",
        &[
            "80",
            "81",
            "1",
            "65535",
            "8000",
            "serve-80-tcp",
            "serve-81-udp",
            "nope",
        ],
    ),
    ("endPort", &["80", "90", "65535"]),
    ("protocol", &["TCP", "UDP", "SCTP"]),
    (
        "cidr",
        &[
            "10.244.0.0/16",
            "10.244.0.1/32",
            "0.0.0.0/0",
            "192.0.2.0/24",
            "::/0",
            "fd00::/8",
        ],
    ),
    ("action", &["Allow", "Deny", "Pass", "Block", "Audit"]),
    ("priority", &["1", "500", "1000", "10000"]),
    ("tier", &["Admin", "Baseline"]),
    ("mode", &["Enforce", "Audit"]),
    ("posture", &["Allowlist", "Denylist"]),
    ("operator", &["In", "NotIn", "Exists", "DoesNotExist"]),
    (
        "path",
        &[
            "/bin/sh",
            "/etc/shadow",
            "/usr/bin/",
            "/var/",
            "/a/b",
            "/",
            "/usr/bin/env",
        ],
    ),
    ("dir", &["/sbin/", "/etc/", "/", "/usr/lib/"]),
    (
        "pattern",
        &[
            "/**/nc*",
            "/tmp/?.txt",
            "/opt/**/bin/*",
            "/**",
            "/a*",
            "/**/",
        ],
    ),
    ("recursive", &["true", "false"]),
    ("readOnly", &["true", "false"]),
    ("ownerOnly", &["true", "false"]),
    ("severity", &["1", "5", "10"]),
    ("pod", &["a", "b", "c"]),
    ("ns", &["x", "y", "z"]),
    ("namespace", &["x", "y", "z"]),
    ("key", &["pod", "ns", "label", "tier"]),
    ("values", &["[a]", "[b, c]", "[tier=web]", "[]", "[pod=a]"]),
    (
        "policyTypes",
        &["[Ingress]", "[Egress]", "[Ingress, Egress]", "[]"],
    ),
];

/// `seed` with `key: value` pairs given other values of their field
/// ([`VALUES`]) and block-list items repeated, as `choices` say.
fn revalue(seed: &str, choices: &[u32]) -> String {
    let mut c = Choices::new(choices);
    let mut text = seed.to_owned();
    while c.left() {
        if c.below(4) == 3 {
            // A block-list item again: one more rule, peer, port or path.
            let lines: Vec<&str> = text.lines().collect();
            let items: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].trim_start().starts_with("- "))
                .collect();
            if let Some(&i) = items.get(c.below(items.len())) {
                let mut out = lines.clone();
                out.insert(i, lines[i]);
                text = out.join("\n") + "\n";
            }
            continue;
        }
        let (key, values) = *c.pick(VALUES);
        let needle = format!("{key}: ");
        let at: Vec<usize> = text
            .match_indices(&needle)
            .map(|(i, _)| i)
            .filter(|&i| i == 0 || text[..i].ends_with([' ', '{', '\n']))
            .collect();
        let Some(&i) = at.get(c.below(at.len())) else {
            continue;
        };
        let start = i + needle.len();
        // A flow list is one value; anything else ends at `,`, `}` or the line.
        let end = if text[start..].starts_with('[') {
            text[start..]
                .find(']')
                .map_or(text.len(), |e| start + e + 1)
        } else {
            text[start..]
                .find([',', '}', '\n'])
                .map_or(text.len(), |e| start + e)
        };
        text.replace_range(start..end, c.pick(values));
    }
    text
}

/// A file of one to three seeds, each given other values ([`revalue`]).
fn revalued(choices: &[u32]) -> Vec<u8> {
    let mut c = Choices::new(choices);
    let docs: Vec<String> = (0..1 + c.below(3))
        .map(|_| {
            let seed = *c.pick(SEEDS);
            let own: Vec<u32> = (0..c.below(12)).map(|_| c.below(1 << 16) as u32).collect();
            revalue(seed, &own)
        })
        .collect();
    docs.join("---\n").into_bytes()
}

/// An accepted document's data in JSON, as the Kubernetes source gives
/// it to the parser, parses as the same data in YAML does. (The data, not
/// the document's own text: a plain scalar's type in YAML depends on what
/// reads it, `ns: y` is the string "y" to a label and `true` to a JSON
/// value, so the text's JSON form may rightly differ.)
fn as_json_the_same(doc: &str) -> Result<(), TestCaseError> {
    // YAML a JSON object cannot hold (a key that is not a string) has no
    // JSON form, and the API server holds only JSON.
    let Ok(value) = yaml::from_str::<serde_json::Value>(doc) else {
        return Ok(());
    };
    // A float has no one text: JSON writes `1e+23` where YAML writes
    // `1.0e+23`, and a string field takes either text as it stands.
    if has_float(&value) {
        return Ok(());
    }
    let (Ok(json), Ok(text)) = (
        serde_json::to_string_pretty(&value),
        yaml::to_string(&value),
    ) else {
        return Ok(());
    };
    let from_json = parse_one(&json, 1, FILE, "x").map(|j| j.policy());
    let from_yaml = parse_one(&text, 1, FILE, "x").map(|y| y.policy());
    prop_assert_eq!(
        from_json.as_ref().ok(),
        from_yaml.as_ref().ok(),
        "the same data as JSON {} and as YAML {}: {:?} {:?}",
        json,
        text,
        from_json.as_ref().err(),
        from_yaml.as_ref().err()
    );
    Ok(())
}

fn has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_float),
        serde_json::Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fn run(cases: u32, strategy: impl Strategy<Value = Vec<u8>>) {
    check(fuzz_cases(cases), strategy, |bytes| parses_cleanly(&bytes)).unwrap();
}

#[test]
fn fuzz_seeds_are_accepted_as_they_are() {
    for seed in SEEDS {
        let docs = split_documents(seed);
        assert_eq!(docs.len(), 1);
        let (start, doc) = &docs[0];
        parse_one(doc, *start, FILE, "x").unwrap();
        parses_cleanly(seed.as_bytes()).unwrap();
    }
}

#[test]
fn fuzz_random_bytes() {
    run(300, vec(any::<u8>(), 0..400));
    // Bytes of YAML's own alphabet get past UTF-8 and into the parser.
    let alphabet: Vec<u8> = b" \n\t-:,?&*!|>'\"%@#{}[]abkxy019./".to_vec();
    run(300, vec(prop::sample::select(alphabet), 0..200));
}

#[test]
fn fuzz_yaml_and_json_shaped_text() {
    run(
        600,
        vec(any::<u32>(), 0..120).prop_map(|c| shaped(&c).into_bytes()),
    );
}

#[test]
fn fuzz_mutated_policies() {
    run(
        1_000,
        vec(any::<u32>(), 0..25).prop_map(|c| mutant(SEEDS, &c)),
    );
}

/// The compiler, network and process/file rules, on policies of every kind
/// with other values than the seeds': most are accepted, and it must
/// take them all without a panic (whether it compiles them right is
/// `compile/property.rs`'s and the LSM tests').
#[test]
fn fuzz_compiler_on_accepted_policies() {
    let (files, accepted) = (Cell::new(0u32), Cell::new(0u32));
    check(
        fuzz_cases(250),
        vec(any::<u32>(), 0..80).prop_map(|c| revalued(&c)),
        |bytes| {
            files.set(files.get() + 1);
            let n = parses_cleanly_then(&bytes, true)?;
            accepted.set(accepted.get() + u32::from(n > 0));
            Ok(())
        },
    )
    .unwrap();
    assert!(
        accepted.get() * 2 > files.get(),
        "only {} of {} files had a policy the parser accepted",
        accepted.get(),
        files.get()
    );
}

/// Prefixes of every seed: a file cut short anywhere, also inside a
/// character. The budget takes 1,000 cuts spread evenly over the seeds; a
/// long run (`PALISADE_FUZZ_CASES=10x`) cuts at every byte. Parsed only:
/// what the prefixes that parse make of the compiler, the mutations (which
/// truncate too) cover.
#[test]
fn fuzz_truncations_of_the_seeds() {
    let bytes: usize = SEEDS.iter().map(|s| s.len() + 1).sum();
    let cuts = usize::try_from(fuzz_cases(1_000)).unwrap_or(usize::MAX);
    let stride = (bytes / cuts.max(1)).max(1);
    for seed in SEEDS {
        for end in (0..=seed.len()).step_by(stride) {
            let cut = &seed.as_bytes()[..end];
            let outcome = std::panic::catch_unwind(|| parses_cleanly_then(cut, false));
            if !matches!(outcome, Ok(Ok(_))) {
                panic!(
                    "{:?}\ntruncated at byte {end}: {:?}",
                    outcome.map(|r| r.map_err(|e| e.to_string())),
                    String::from_utf8_lossy(cut)
                );
            }
        }
    }
}
