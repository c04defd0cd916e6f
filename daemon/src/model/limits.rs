//! What Palisade reads at most: every limit on its input in one place, each
//! a named constant with the reason for its value. Input beyond a limit is
//! refused with an error that names the limit, before it costs more than
//! the limit allows, and the refused file's or object's last good version
//! stays in force (the sources keep it; README, "Daemon", "Bad input").
//!
//! Three levels, each checked as early and as cheaply as it can be:
//!
//! - a **file** of the file source: its size (from its metadata, before
//!   reading; the read itself stops at the limit too), UTF-8, and how many
//!   documents it holds (counted before any is parsed);
//! - a **YAML document**, whatever it holds (policies, objects, scenario
//!   files): nesting depth, nodes, aliases and their expansion, the bytes of
//!   its scalars, all enforced by serde-saphyr's budget while it parses
//!   ([`yaml_options`]);
//! - a **policy**: rules, peers, ports, (peer, port) pairs, selector terms,
//!   and process and file rule entries, counted on the parsed document
//!   before it is validated or compiled.

use serde_saphyr::Options;

use super::{
    kubearmor::{self, KubeArmorPolicySpec},
    networkpolicy::RuleRef,
    parse::Invalid,
    process_file::{FileSection, ProcessSection},
    selector::LabelSelector,
};

const MIB: u64 = 1024 * 1024;

/// Bytes of one file of the file source. The Kubernetes API server refuses
/// an object above about 1.5 MiB (etcd's request limit), so no policy the
/// API could hold comes near this; a file may hold several objects (a
/// node's namespaces and pods), hence a few times that.
pub const MAX_FILE_BYTES: u64 = 4 * MIB;

/// Bytes of all files of the file source together: the files' text is kept
/// between passes (only changed files are parsed again), so this bounds
/// what a directory can make the daemon hold. About 30 files at the file
/// limit; a node's cluster of 10,000 pods and 1,000 policies as YAML is
/// about 20 MiB.
pub const MAX_SOURCE_BYTES: u64 = 128 * MIB;

/// Documents (`---`-separated) in one file. Each costs a parse of its own;
/// a flood of empty or tiny documents in a few hundred kilobytes would
/// otherwise cost seconds per pass.
pub const MAX_DOCUMENTS_PER_FILE: usize = 1_000;

/// Nesting of mappings and sequences in one document. The deepest field of
/// any kind Palisade reads is about 8 levels down
/// (`spec.ingress[0].from[0].podSelector.matchExpressions[0].values[0]`),
/// a Pod's `managedFields` about 15; deeper input is refused before it can
/// exhaust the stack of a recursive reader (`serde_json::Value`,
/// [`super::yaml::Positions`]).
pub const MAX_DEPTH: usize = 32;

/// Nodes (mappings, sequences, scalars) in one document, aliases expanded.
/// What a document costs in memory is about proportional to its nodes;
/// this lets a policy that breaks a per-policy limit below (100,000 ports
/// are 300,000 nodes) be refused by that limit, by name.
pub const MAX_NODES: usize = 500_000;

/// Nodes of a document whose field positions are looked up for an error
/// message ([`super::yaml::Positions`] keeps every node with its span); a
/// larger document's errors give the line and column without the field's
/// path.
pub const MAX_POSITIONED_NODES: usize = 100_000;

/// Alias uses (`*name`) in one document. Policies rarely use anchors; a
/// "billion laughs" needs many.
pub const MAX_ALIASES: usize = 1_000;

/// Nodes that aliases may replay in one document, all aliases together: an
/// anchor is expanded each time it is used, so this, not the text's size,
/// bounds what an alias bomb costs. About a policy's worth of nodes.
pub const MAX_ALIAS_EXPANSION: usize = 50_000;

/// Bytes of all scalars of one document, aliases expanded: without aliases
/// a document's scalars cannot exceed its file.
pub const MAX_SCALAR_BYTES: usize = MAX_FILE_BYTES as usize;

/// Rules (ingress and egress together) of one policy.
pub const MAX_RULES_PER_POLICY: usize = 1_000;

/// Peers of one policy, all rules together, each ipBlock's `except` entries
/// counted as peers (each is an identity of its own). The identity map
/// holds 16,384 prefixes by default.
pub const MAX_PEERS_PER_POLICY: usize = 10_000;

/// Ports of one policy, all rules together (a range is one port entry).
pub const MAX_PORTS_PER_POLICY: usize = 10_000;

/// (peer, port) pairs of one policy: for each rule its peers times its
/// ports (an empty list counts as one: any). Each pair is at least one map
/// entry for each identity the peer matches, per endpoint the policy
/// selects; this is the exact-port map's default size (`PAL_POLICY_PORT`,
/// 131,072 entries), which a policy beyond it would overflow on a single
/// endpoint. It also bounds the compiler's work per selected endpoint.
pub const MAX_PEER_PORT_PAIRS_PER_POLICY: usize = 131_072;

/// Selector terms of one policy: `matchLabels` entries and
/// `matchExpressions` values (an expression without values counts one), of
/// its own selectors and its peers'. Matching is per pod per term.
pub const MAX_SELECTOR_TERMS_PER_POLICY: usize = 10_000;

/// Entries of a policy's process and file rules: paths, directories,
/// patterns and `fromSource` executables, both sections together. Each is
/// at least one entry of the LSM rule map per pod the policy selects, which
/// holds 65,536 by default (`PAL_LSM_RULES`).
pub const MAX_LSM_ENTRIES_PER_POLICY: usize = 65_536;

/// Prefixes one Pod may list in `palisade.dev/source-prefixes`: a gateway
/// forwards for a few networks, and `PAL_SRC_PREFIX` holds 1,024 entries
/// by default (64 such pods at the limit; `--map-size` resizes it).
pub const MAX_SOURCE_PREFIXES_PER_POD: usize = 16;

/// A Pod's addresses besides the lowest of each family that its packets
/// may come from (a file source may list several per family; a Kubernetes
/// Pod's `status.podIPs` holds one per family): each is an entry of
/// `PAL_SRC_PREFIX`, beside the annotated prefixes.
pub const MAX_FURTHER_ADDRESSES_PER_POD: usize = 16;

/// serde-saphyr's options for every YAML document Palisade reads: its
/// budget set to the limits above (`max_nodes` for [`MAX_NODES`] or, for
/// a position lookup, [`MAX_POSITIONED_NODES`]), duplicate keys refused
/// (its default), no `!include` (a parser feature Palisade does not build).
pub fn yaml_options(max_nodes: usize) -> Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_nodes: max_nodes,
            // Every node is one event, every mapping and sequence one more
            // for its end.
            max_events: 2 * max_nodes + 16,
            max_aliases: MAX_ALIASES,
            max_total_scalar_bytes: MAX_SCALAR_BYTES,
            max_recorded_anchor_events: max_nodes,
            max_recorded_anchor_bytes: MAX_SCALAR_BYTES,
            max_documents: MAX_DOCUMENTS_PER_FILE,
            max_reader_input_bytes: Some(MAX_SCALAR_BYTES),
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_EXPANSION,
            max_replay_stack_depth: MAX_DEPTH,
        },
    }
}

/// What a file's bytes must be before any is parsed: at most
/// [`MAX_FILE_BYTES`], UTF-8, at most [`MAX_DOCUMENTS_PER_FILE`] documents.
/// The error says what was refused and the limit, not the file's name (the
/// caller adds it).
pub fn check_file(bytes: &[u8]) -> Result<&str, String> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!(
            "not UTF-8: invalid byte 0x{:02x} at line {line} column {column} (byte {}); \
             YAML and JSON are UTF-8",
            bytes[e.valid_up_to()],
            e.valid_up_to()
        )
    })?;
    check_documents(text)?;
    Ok(text)
}

/// The error for a file of `size` bytes.
pub fn too_large(size: u64) -> String {
    format!(
        "{size} bytes, above the limit of {MAX_FILE_BYTES} bytes ({} MiB) for a source file; \
         not read",
        MAX_FILE_BYTES / MIB
    )
}

/// At most [`MAX_DOCUMENTS_PER_FILE`] documents in `text`, counted by their
/// separators (an upper bound of what [`super::parse::split_documents`]
/// keeps), without splitting it.
pub fn check_documents(text: &str) -> Result<(), String> {
    let separators = text.lines().filter(|l| l.trim_end() == "---").count();
    if separators >= MAX_DOCUMENTS_PER_FILE {
        let documents = super::parse::split_documents(text).len();
        if documents > MAX_DOCUMENTS_PER_FILE {
            return Err(format!(
                "{documents} documents, above the limit of {MAX_DOCUMENTS_PER_FILE} per file"
            ));
        }
    }
    Ok(())
}

fn over(count: usize, limit: usize, what: &str) -> Result<(), Invalid> {
    if count > limit {
        return Err(Invalid::new(
            "spec",
            format!("{count} {what}, above the limit of {limit} per policy"),
        ));
    }
    Ok(())
}

fn selector_terms(s: &LabelSelector) -> usize {
    s.match_labels.len()
        + s.match_expressions
            .iter()
            .map(|e| e.values.len().max(1))
            .sum::<usize>()
}

/// The per-policy limits on a policy's network part: its own `selectors`
/// (pod and namespace selectors of its subject) and its rules.
pub fn check_network<'a>(
    selectors: &[Option<&LabelSelector>],
    rules: impl Iterator<Item = RuleRef<'a>>,
) -> Result<(), Invalid> {
    let (mut count, mut peers, mut ports, mut pairs) = (0usize, 0usize, 0usize, 0usize);
    let mut terms: usize = selectors.iter().flatten().map(|s| selector_terms(s)).sum();
    for rule in rules {
        count += 1;
        let rule_peers: usize = rule
            .peers
            .iter()
            .map(|p| 1 + p.ip_block.as_ref().map_or(0, |b| b.except.len()))
            .sum();
        peers = peers.saturating_add(rule_peers);
        ports = ports.saturating_add(rule.ports.len());
        pairs = pairs.saturating_add(rule_peers.max(1).saturating_mul(rule.ports.len().max(1)));
        for p in rule.peers {
            for s in [&p.pod_selector, &p.namespace_selector]
                .into_iter()
                .flatten()
            {
                terms = terms.saturating_add(selector_terms(s));
            }
        }
    }
    over(count, MAX_RULES_PER_POLICY, "rules")?;
    over(
        peers,
        MAX_PEERS_PER_POLICY,
        "peers in its rules (ipBlock excepts included)",
    )?;
    over(ports, MAX_PORTS_PER_POLICY, "ports in its rules")?;
    over(
        pairs,
        MAX_PEER_PORT_PAIRS_PER_POLICY,
        "(peer, port) pairs in its rules",
    )?;
    over(
        terms,
        MAX_SELECTOR_TERMS_PER_POLICY,
        "selector terms (matchLabels entries and matchExpressions values)",
    )
}

/// The per-policy limit on process and file rules.
pub fn check_sections(
    process: Option<&ProcessSection>,
    file: Option<&FileSection>,
) -> Result<(), Invalid> {
    let process = process.map_or(0, |s| {
        s.rules
            .iter()
            .map(|r| r.paths.len() + r.dirs.len() + r.patterns.len() + r.from_source.len())
            .sum()
    });
    let file = file.map_or(0, |s| {
        s.rules
            .iter()
            .map(|r| r.paths.len() + r.dirs.len() + r.patterns.len() + r.from_source.len())
            .sum::<usize>()
    });
    over(
        process + file,
        MAX_LSM_ENTRIES_PER_POLICY,
        "paths, directories, patterns and fromSource entries in its process and file rules",
    )
}

/// The per-policy limits on a KubeArmorPolicy, on its own fields before
/// it is converted: its process and file entries (each `fromSource` entry
/// counted) and its selector's terms.
pub fn check_kubearmor(spec: &KubeArmorPolicySpec) -> Result<(), Invalid> {
    let section = |s: &kubearmor::Section| -> usize {
        let paths: usize = s.match_paths.iter().map(|p| 1 + p.from_source.len()).sum();
        let dirs: usize = s
            .match_directories
            .iter()
            .map(|d| 1 + d.from_source.len())
            .sum();
        paths + dirs + s.match_patterns.len()
    };
    let entries = spec.process.as_ref().map_or(0, section) + spec.file.as_ref().map_or(0, section);
    over(
        entries,
        MAX_LSM_ENTRIES_PER_POLICY,
        "paths, directories, patterns and fromSource entries in its process and file rules",
    )?;
    let s = &spec.selector;
    let terms = s.match_labels.len()
        + s.match_expressions
            .iter()
            .map(|e| e.values.len().max(1))
            .sum::<usize>();
    over(
        terms,
        MAX_SELECTOR_TERMS_PER_POLICY,
        "selector terms (matchLabels entries and matchExpressions values)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        networkpolicy::{IpBlock, Peer, PolicyPort},
        selector::{Operator, Requirement},
    };

    #[test]
    fn files_are_refused_by_size_encoding_and_document_count_with_the_limit_named() {
        let big = vec![b'#'; MAX_FILE_BYTES as usize + 1];
        let e = check_file(&big).unwrap_err();
        assert!(
            e.contains("above the limit of 4194304 bytes (4 MiB)"),
            "{e}"
        );
        let e = check_file(b"a: 1\nb: \xff\n").unwrap_err();
        assert!(
            e.starts_with("not UTF-8: invalid byte 0xff at line 2 column 4"),
            "{e}"
        );
        let many = "a: 1\n---\n".repeat(MAX_DOCUMENTS_PER_FILE + 1);
        let e = check_file(many.as_bytes()).unwrap_err();
        assert!(
            e.contains("1001 documents, above the limit of 1000 per file"),
            "{e}"
        );
        // Separators alone are not documents.
        let empty = "---\n".repeat(5 * MAX_DOCUMENTS_PER_FILE);
        assert_eq!(check_file(empty.as_bytes()), Ok(empty.as_str()));
        let at_limit = "a: 1\n---\n".repeat(MAX_DOCUMENTS_PER_FILE);
        assert!(check_file(at_limit.as_bytes()).is_ok());
    }

    fn refusal(text: &str) -> String {
        let mut docs = super::super::parse::parse_documents(text, "f.yaml", "x");
        assert_eq!(docs.len(), 1);
        docs.remove(0).unwrap_err().to_string()
    }

    const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n";

    #[test]
    fn documents_over_a_yaml_limit_are_refused_naming_it() {
        let nested = format!(
            "{NP}    - podSelector: {}{}\n",
            "{matchLabels: ".repeat(40),
            "}".repeat(40)
        );
        let e = refusal(&nested);
        assert!(
            e.contains("nested deeper than 32 levels, the limit for a document"),
            "{e}"
        );
        // Billion laughs: ten levels of ten aliases each, under `status`
        // (any YAML there is accepted and ignored).
        let mut bomb = format!(
            "{NP}    - podSelector: {{}}\nstatus:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        );
        for i in 1..10 {
            let p = i - 1;
            let uses = vec![format!("*a{p}"); 10].join(", ");
            bomb.push_str(&format!("  a{i}: &a{i} [{uses}]\n"));
        }
        let e = refusal(&bomb);
        assert!(e.contains("alias"), "{e}");
        // The nodes limit, shown with a small budget (a document at the
        // real one takes seconds to parse in a debug build).
        let small: Result<serde_json::Value, _> =
            serde_saphyr::from_str_with_options("[1, 2, 3, 4, 5]", yaml_options(3));
        let e = super::super::yaml::Error::from(small.unwrap_err());
        assert!(
            e.message
                .contains("more than 500000 nodes, the limit for a document"),
            "{e}"
        );
    }

    #[test]
    fn policies_over_a_limit_are_refused_naming_it_and_the_object() {
        // Through the parser, the error names the file, the object and the
        // limit (each limit is met by a document of tens of thousands of
        // nodes: one is enough for a debug build's unit tests).
        let ports = NP.replace("  - from:\n", "  - ports:\n")
            + &"    - port: 80\n".repeat(MAX_PORTS_PER_POLICY + 1);
        let e = refusal(&ports);
        assert!(
            e.starts_with(
                "f.yaml:1: x/p: spec: 10001 ports in its rules, above the limit of 10000 per policy"
            ),
            "{e}"
        );
        // At the limit, it parses.
        let ports = NP.replace("  - from:\n", "  - ports:\n")
            + &"    - port: 80\n".repeat(MAX_PORTS_PER_POLICY);
        assert!(super::super::parse::parse_documents(&ports, "f.yaml", "x")[0].is_ok());
        let pnp = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {name: q, namespace: x}\nspec:\n  podSelector: {}\n  file:\n    rules: [{action: Block, paths: [/a]}]\n";
        assert!(super::super::parse::parse_documents(pnp, "f.yaml", "x")[0].is_ok());

        // The other limits on the parsed values.
        let block = Peer {
            ip_block: Some(IpBlock {
                cidr: "10.0.0.0/8".into(),
                except: vec!["10.1.0.0/16".into()],
            }),
            ..Peer::default()
        };
        let port = PolicyPort::default();
        let check = |peers: &[Peer], ports: &[PolicyPort], rules: usize| {
            let rule = RuleRef {
                action: None,
                peers,
                ports,
            };
            check_network(&[], std::iter::repeat_n(rule, rules))
                .unwrap_err()
                .to_string()
        };
        let e = check(&vec![block.clone(); MAX_PEERS_PER_POLICY / 2 + 1], &[], 1);
        assert!(
            e.starts_with("spec: 10002 peers in its rules (ipBlock excepts included)"),
            "{e}"
        );
        let e = check(&vec![block; 200], &vec![port; 400], 1);
        assert!(
            e.contains("160000 (peer, port) pairs in its rules, above the limit of 131072"),
            "{e}"
        );
        let e = check(&[], &[], MAX_RULES_PER_POLICY + 1);
        assert!(
            e.contains("1001 rules, above the limit of 1000 per policy"),
            "{e}"
        );
        let wide = LabelSelector {
            match_expressions: vec![Requirement {
                key: "a".into(),
                operator: Operator::In,
                values: vec!["v".into(); MAX_SELECTOR_TERMS_PER_POLICY + 1],
            }],
            ..LabelSelector::default()
        };
        let e = check_network(&[Some(&wide)], std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains("10001 selector terms"), "{e}");
        let file = FileSection {
            posture: None,
            rules: vec![super::super::process_file::FileRule {
                action: super::super::process_file::LsmAction::Block,
                paths: vec!["/a".into(); MAX_LSM_ENTRIES_PER_POLICY],
                dirs: Vec::new(),
                patterns: Vec::new(),
                from_source: vec!["/bin/sh".into()],
                read_only: false,
                owner_only: false,
            }],
        };
        let e = check_sections(None, Some(&file)).unwrap_err().to_string();
        assert!(e.starts_with("spec: 65537 paths"), "{e}");
        let mut ksp = KubeArmorPolicySpec::default();
        let path = kubearmor::MatchPath {
            path: Some("/a".into()),
            from_source: vec![kubearmor::Source::default(); 2],
            ..kubearmor::MatchPath::default()
        };
        ksp.process = Some(kubearmor::Section {
            match_paths: vec![path; MAX_LSM_ENTRIES_PER_POLICY / 3 + 1],
            ..kubearmor::Section::default()
        });
        let e = check_kubearmor(&ksp).unwrap_err().to_string();
        assert!(e.starts_with("spec: 65538 paths"), "{e}");
        // At the limits, policies parse.
        let ports = NP.replace("  - from:\n", "  - ports:\n")
            + &"    - port: 80\n".repeat(MAX_PORTS_PER_POLICY);
        assert!(super::super::parse::parse_documents(&ports, "f.yaml", "x")[0].is_ok());
    }
}
