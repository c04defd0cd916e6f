//! Policy documents from YAML (or JSON, which is YAML) text.
//!
//! Each document is parsed on its own: a bad one is reported with its file,
//! line and object and the field at fault, and the others still parse, so
//! the caller can keep the last good version of just the bad object.

use std::fmt;

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    networkpolicy::{NetworkPolicy, ObjectMeta, Peer, PolicyPort, PortRef, valid_port_name},
    palisade::{
        API_VERSION, Action, ClusterTier, MAX_PRIORITY, PalisadeClusterNetworkPolicySpec,
        PalisadeNetworkPolicySpec,
    },
    policy::Policy,
};

/// A policy document of a kind Palisade knows.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    NetworkPolicy(NetworkPolicy),
    PalisadeNetworkPolicy(Object<PalisadeNetworkPolicySpec>),
    PalisadeClusterNetworkPolicy(Object<PalisadeClusterNetworkPolicySpec>),
}

impl Document {
    /// The kind-independent form the compiler reads.
    pub fn policy(&self) -> Policy {
        match self {
            Self::NetworkPolicy(p) => Policy::from(p),
            Self::PalisadeNetworkPolicy(o) => Policy::from_namespaced(
                o.metadata.namespace.as_deref().unwrap_or("default"),
                &o.metadata.name,
                &o.spec,
            ),
            Self::PalisadeClusterNetworkPolicy(o) => {
                Policy::from_cluster(&o.metadata.name, &o.spec)
            }
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::NetworkPolicy(p) => &p.metadata,
            Self::PalisadeNetworkPolicy(o) => &o.metadata,
            Self::PalisadeClusterNetworkPolicy(o) => &o.metadata,
        }
    }
}

/// A Palisade object as stored: the same envelope as any Kubernetes object.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    /// 1-based line of the document (or of the fault, when known).
    pub line: usize,
    /// `namespace/name` when the document got that far.
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// What every document starts with: enough to tell its kind and name
/// before the strict parse of that kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
}

#[derive(Deserialize)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// The documents of a YAML stream with the line each starts on.
pub fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Parses every document of `text`; `file` names it in errors. `default_ns`
/// applies to namespaced objects without a namespace.
pub fn parse_documents(
    text: &str,
    file: &str,
    default_ns: &str,
) -> Vec<Result<Document, ParseError>> {
    split_documents(text)
        .into_iter()
        .map(|(start, doc)| parse_one(&doc, start, file, default_ns))
        .collect()
}

/// Parses one policy document that starts on line `start` of `file`.
pub fn parse_one(
    doc: &str,
    start: usize,
    file: &str,
    default_ns: &str,
) -> Result<Document, ParseError> {
    let error = |line: usize, object: Option<String>, message: String| ParseError {
        file: file.to_owned(),
        line,
        object,
        message,
    };
    let at = |e: &serde_yaml::Error| start + e.location().map_or(0, |l| l.line().saturating_sub(1));
    let head: Head = serde_yaml::from_str(doc).map_err(|e| error(at(&e), None, e.to_string()))?;
    let object = head.metadata.as_ref().and_then(|m| {
        let name = m.name.as_deref()?;
        Some(format!(
            "{}/{name}",
            m.namespace.as_deref().unwrap_or(default_ns)
        ))
    });
    match (head.api_version.as_deref(), head.kind.as_deref()) {
        (Some("networking.k8s.io/v1"), Some("NetworkPolicy")) => {
            let mut policy: NetworkPolicy = serde_yaml::from_str(doc)
                .map_err(|e| error(at(&e), object.clone(), e.to_string()))?;
            if policy.metadata.namespace.is_none() {
                policy.metadata.namespace = Some(default_ns.to_owned());
            }
            validate(&policy).map_err(|m| error(start, object.clone(), m))?;
            Ok(Document::NetworkPolicy(policy))
        }
        (Some(API_VERSION), Some("PalisadeNetworkPolicy")) => {
            let mut o: Object<PalisadeNetworkPolicySpec> = serde_yaml::from_str(doc)
                .map_err(|e| error(at(&e), object.clone(), e.to_string()))?;
            if o.metadata.namespace.is_none() {
                o.metadata.namespace = Some(default_ns.to_owned());
            }
            validate_namespaced(&o.spec).map_err(|m| error(start, object.clone(), m))?;
            Ok(Document::PalisadeNetworkPolicy(o))
        }
        (Some(API_VERSION), Some("PalisadeClusterNetworkPolicy")) => {
            let object = head
                .metadata
                .as_ref()
                .and_then(|m| m.name.clone())
                .map(|n| format!("cluster:{n}"));
            let o: Object<PalisadeClusterNetworkPolicySpec> = serde_yaml::from_str(doc)
                .map_err(|e| error(at(&e), object.clone(), e.to_string()))?;
            if o.metadata.namespace.is_some() {
                return Err(error(
                    start,
                    object,
                    "metadata.namespace: a PalisadeClusterNetworkPolicy is cluster-scoped".into(),
                ));
            }
            validate_cluster(&o.spec).map_err(|m| error(start, object.clone(), m))?;
            Ok(Document::PalisadeClusterNetworkPolicy(o))
        }
        (api, kind) => Err(error(
            start,
            object,
            format!(
                "unknown kind {} (apiVersion {}): expected networking.k8s.io/v1 NetworkPolicy, \
                 {API_VERSION} PalisadeNetworkPolicy or PalisadeClusterNetworkPolicy",
                kind.unwrap_or("<none>"),
                api.unwrap_or("<none>")
            ),
        )),
    }
}

fn validate_priority(priority: Option<u32>) -> Result<(), String> {
    match priority {
        Some(p) if p > MAX_PRIORITY => Err(format!(
            "spec.priority: {p} is above the maximum {MAX_PRIORITY}"
        )),
        _ => Ok(()),
    }
}

fn validate_sections(
    process: Option<&super::process_file::ProcessSection>,
    file: Option<&super::process_file::FileSection>,
) -> Result<(), String> {
    if let Some(p) = process {
        p.validate("spec.process")?;
    }
    if let Some(f) = file {
        f.validate("spec.file")?;
    }
    Ok(())
}

/// The rules of a Palisade kind as (path, peers field, action, peers, ports).
type Checked<'a> = (
    String,
    &'static str,
    Option<Action>,
    &'a [Peer],
    &'a [PolicyPort],
);

fn palisade_rules<'a>(
    ingress: &'a [super::palisade::IngressRule],
    egress: &'a [super::palisade::EgressRule],
) -> Vec<Checked<'a>> {
    ingress
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                format!("spec.ingress[{i}]"),
                "from",
                r.action,
                r.from.as_slice(),
                r.ports.as_slice(),
            )
        })
        .chain(egress.iter().enumerate().map(|(i, r)| {
            (
                format!("spec.egress[{i}]"),
                "to",
                r.action,
                r.to.as_slice(),
                r.ports.as_slice(),
            )
        }))
        .collect()
}

pub fn validate_namespaced(spec: &PalisadeNetworkPolicySpec) -> Result<(), String> {
    spec.pod_selector
        .validate()
        .map_err(|e| format!("spec.podSelector: {e}"))?;
    validate_priority(spec.priority)?;
    let rules = palisade_rules(&spec.ingress, &spec.egress);
    for (path, _, action, _, _) in &rules {
        if *action == Some(Action::Pass) {
            return Err(format!(
                "{path}.action: Pass is only for PalisadeClusterNetworkPolicy in the Admin tier"
            ));
        }
    }
    validate_rules(
        rules
            .into_iter()
            .map(|(p, f, _, peers, ports)| (p, f, peers, ports)),
    )?;
    validate_sections(spec.process.as_ref(), spec.file.as_ref())
}

pub fn validate_cluster(spec: &PalisadeClusterNetworkPolicySpec) -> Result<(), String> {
    for (name, sel) in [
        ("namespaceSelector", &spec.subject.namespace_selector),
        ("podSelector", &spec.subject.pod_selector),
    ] {
        if let Some(sel) = sel {
            sel.validate()
                .map_err(|e| format!("spec.subject.{name}: {e}"))?;
        }
    }
    validate_priority(spec.priority)?;
    let baseline = spec.tier == Some(ClusterTier::Baseline);
    let rules = palisade_rules(&spec.ingress, &spec.egress);
    for (path, _, action, _, _) in &rules {
        match action {
            None => {
                return Err(format!(
                    "{path}.action: required in a cluster policy (Allow, Deny or Pass)"
                ));
            }
            Some(Action::Pass) if baseline => {
                return Err(format!(
                    "{path}.action: Pass has nothing to pass to in the Baseline tier"
                ));
            }
            _ => {}
        }
    }
    validate_rules(
        rules
            .into_iter()
            .map(|(p, f, _, peers, ports)| (p, f, peers, ports)),
    )?;
    validate_sections(spec.process.as_ref(), spec.file.as_ref())
}

/// What the API server's validation would refuse, named by field path.
pub fn validate(p: &NetworkPolicy) -> Result<(), String> {
    p.spec
        .pod_selector
        .validate()
        .map_err(|e| format!("spec.podSelector: {e}"))?;
    let rules = p
        .spec
        .ingress
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                format!("spec.ingress[{i}]"),
                "from",
                r.from.as_slice(),
                r.ports.as_slice(),
            )
        })
        .chain(p.spec.egress.iter().enumerate().map(|(i, r)| {
            (
                format!("spec.egress[{i}]"),
                "to",
                r.to.as_slice(),
                r.ports.as_slice(),
            )
        }));
    validate_rules(rules)
}

/// Peers and ports of rules given as (path, peers field, peers, ports).
fn validate_rules<'a>(
    rules: impl Iterator<Item = (String, &'static str, &'a [Peer], &'a [PolicyPort])>,
) -> Result<(), String> {
    for (path, peers_field, peers, ports) in rules {
        for (j, peer) in peers.iter().enumerate() {
            let at = format!("{path}.{peers_field}[{j}]");
            if let Some(block) = &peer.ip_block {
                if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
                    return Err(format!("{at}: ipBlock cannot be combined with a selector"));
                }
                let cidr: IpNet = block
                    .cidr
                    .parse()
                    .map_err(|_| format!("{at}.ipBlock.cidr: {:?} is not a CIDR", block.cidr))?;
                for (k, except) in block.except.iter().enumerate() {
                    let e: IpNet = except.parse().map_err(|_| {
                        format!("{at}.ipBlock.except[{k}]: {except:?} is not a CIDR")
                    })?;
                    if !cidr.contains(&e) || e.prefix_len() <= cidr.prefix_len() {
                        return Err(format!(
                            "{at}.ipBlock.except[{k}]: {except} is not strictly inside {}",
                            block.cidr
                        ));
                    }
                }
            } else if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
                return Err(format!(
                    "{at}: a peer needs podSelector, namespaceSelector or ipBlock"
                ));
            }
            for (name, sel) in [
                ("podSelector", &peer.pod_selector),
                ("namespaceSelector", &peer.namespace_selector),
            ] {
                if let Some(sel) = sel {
                    sel.validate().map_err(|e| format!("{at}.{name}: {e}"))?;
                }
            }
        }
        for (j, port) in ports.iter().enumerate() {
            let at = format!("{path}.ports[{j}]");
            match (&port.port, port.end_port) {
                (Some(PortRef::Number(n)), end) => {
                    if !(1..=65535).contains(n) {
                        return Err(format!("{at}.port: {n} is not between 1 and 65535"));
                    }
                    if let Some(end) = end
                        && (end < *n || end > 65535)
                    {
                        return Err(format!(
                            "{at}.endPort: {end} must be between port ({n}) and 65535"
                        ));
                    }
                }
                (Some(PortRef::Name(name)), end) => {
                    if !valid_port_name(name) {
                        return Err(format!(
                            "{at}.port: {name:?} is not a valid port name (IANA service name)"
                        ));
                    }
                    if end.is_some() {
                        return Err(format!("{at}.endPort: not allowed with a named port"));
                    }
                }
                (None, Some(_)) => return Err(format!("{at}.endPort: needs port")),
                (None, None) => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: x, uid: 1234, resourceVersion: \"7\"}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {}}]
    ports: [{port: 80}, {protocol: UDP, port: serve-81-udp}, {port: 8000, endPort: 8080}]
";

    fn one(text: &str) -> Result<Document, ParseError> {
        parse_documents(text, "f.yaml", "default").remove(0)
    }

    #[test]
    fn a_policy_as_the_server_stores_it_parses() {
        let Document::NetworkPolicy(p) = one(GOOD).unwrap() else {
            unreachable!()
        };
        assert_eq!(p.metadata.name, "allow-a");
        assert_eq!(p.policy_types(), (true, false));
        assert_eq!(p.spec.ingress[0].ports.len(), 3);
    }

    #[test]
    fn errors_name_file_line_object_and_field() {
        let text = format!(
            "{GOOD}---\n{}",
            GOOD.replace("podSelector: {}", "podSelektor: {}")
                .replace("allow-a", "typo")
        );
        let docs = parse_documents(&text, "f.yaml", "default");
        assert!(docs[0].is_ok(), "the good document still parses");
        let err = docs[1].clone().unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("f.yaml:"), "{shown}");
        assert!(
            err.line > 10,
            "line {} should be in the second document",
            err.line
        );
        assert_eq!(err.object.as_deref(), Some("x/typo"));
        assert!(shown.contains("podSelektor"), "{shown}");
    }

    #[test]
    fn invalid_values_are_refused_with_their_field() {
        let cases = [
            (
                GOOD.replace("{port: 80}", "{port: 0}"),
                "spec.ingress[0].ports[0].port",
            ),
            (
                GOOD.replace("serve-81-udp", "Serve_81"),
                "spec.ingress[0].ports[1].port",
            ),
            (
                GOOD.replace("endPort: 8080", "endPort: 7000"),
                "spec.ingress[0].ports[2].endPort",
            ),
            (
                GOOD.replace("{podSelector: {}}", "{ipBlock: {cidr: 10.0.0.0/33}}"),
                "ipBlock.cidr",
            ),
            (
                GOOD.replace(
                    "{podSelector: {}}",
                    "{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}",
                ),
                "ipBlock.except[0]",
            ),
            (
                GOOD.replace(
                    "{podSelector: {}}",
                    "{podSelector: {matchExpressions: [{key: a, operator: In}]}}",
                ),
                "spec.ingress[0].from[0].podSelector",
            ),
        ];
        for (text, field) in cases {
            let err = one(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{field} not in: {err}");
            assert!(err.contains("x/allow-a"), "object not named: {err}");
        }
    }

    #[test]
    fn unknown_kinds_are_errors_not_ignored() {
        let err = one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n").unwrap_err();
        assert!(err.message.contains("unknown kind ConfigMap"), "{err}");
    }

    #[test]
    fn policy_types_default_from_the_egress_section() {
        let egress = GOOD.replace(
            "  ingress:\n",
            "  egress:\n  - to: [{podSelector: {}}]\n  ingress:\n",
        );
        let Document::NetworkPolicy(p) = one(&egress).unwrap() else {
            unreachable!()
        };
        assert_eq!(p.policy_types(), (true, true));
        let listed = GOOD.replace("  ingress:\n", "  policyTypes: [Egress]\n  ingress:\n");
        let Document::NetworkPolicy(p) = one(&listed).unwrap() else {
            unreachable!()
        };
        assert_eq!(p.policy_types(), (false, true));
    }

    const PNP: &str = "
apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: no-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  priority: 500
  mode: Audit
  ingress:
  - action: Deny
    from: [{podSelector: {matchLabels: {pod: b}}}]
  process:
    posture: Allowlist
    rules: [{action: Allow, dirs: [{path: /usr/bin/, recursive: true}]}]
  file:
    rules: [{action: Block, paths: [/etc/shadow]}]
";

    const CNP: &str = "
apiVersion: palisade.dev/v1alpha1
kind: PalisadeClusterNetworkPolicy
metadata: {name: admin}
spec:
  tier: Admin
  priority: 10
  subject: {namespaceSelector: {matchLabels: {ns: x}}}
  egress:
  - action: Pass
    to: [{ipBlock: {cidr: 192.0.2.0/24}}]
";

    #[test]
    fn palisade_kinds_parse_into_the_common_policy_form() {
        let p = one(PNP).unwrap().policy();
        assert_eq!(p.key(), "palisade:x/no-b");
        assert!(p.audit);
        assert_eq!(p.priority, 500);
        assert_eq!(
            p.ingress.as_ref().unwrap()[0].action,
            super::super::palisade::Action::Deny
        );
        assert!(p.egress.is_none(), "policyTypes default as NetworkPolicy's");
        assert!(p.process.is_some() && p.file.is_some());
        let c = one(CNP).unwrap().policy();
        assert_eq!(c.key(), "cluster:admin");
        assert_eq!(c.tier, super::super::policy::Tier::Admin);
        assert!(c.ingress.is_none() && c.egress.is_some());
        assert!(!c.isolates(true), "cluster policies never isolate");
    }

    #[test]
    fn palisade_kinds_refuse_what_their_rules_forbid() {
        let cases = [
            (
                PNP.replace("priority: 500", "priority: 20000"),
                "spec.priority",
            ),
            (
                PNP.replace("action: Deny", "action: Pass"),
                "spec.ingress[0].action",
            ),
            (PNP.replace("mode: Audit", "mode: Loud"), "mode"),
            (
                PNP.replace("/etc/shadow", "etc/shadow"),
                "spec.file.rules[0].paths[0]",
            ),
            (
                PNP.replace("recursive: true", "recursive: true, depth: 2"),
                "depth",
            ),
            (CNP.replace("action: Pass\n", ""), "spec.egress[0].action"),
            (
                CNP.replace("tier: Admin", "tier: Baseline"),
                "Pass has nothing to pass to",
            ),
            (
                CNP.replace("{name: admin}", "{name: admin, namespace: x}"),
                "cluster-scoped",
            ),
            (CNP.replace("192.0.2.0/24", "192.0.2.0/33"), "ipBlock.cidr"),
        ];
        for (text, needle) in cases {
            let err = one(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle} not in: {err}");
        }
    }
}
