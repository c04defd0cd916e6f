//! Policy documents from YAML (or JSON, which is YAML) text.
//!
//! Each document is parsed on its own: a bad one is reported with its file,
//! line and column, its object and the field at fault, and the others still
//! parse, so the caller can keep the last good version of just the bad
//! object.

use std::fmt;

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    kubearmor::{self, KUBEARMOR_API_VERSION, KubeArmorPolicy, KubeArmorPolicySpec},
    limits,
    networkpolicy::{
        NetworkPolicy, ObjectMeta, Peer, PolicyPort, PortRef, RuleRef, rules, valid_port_name,
    },
    palisade::{
        API_VERSION, Action, ClusterTier, MAX_PRIORITY, PalisadeClusterNetworkPolicySpec,
        PalisadeNetworkPolicySpec,
    },
    policy::{Kind, Policy},
    process_file::{FileSection, ProcessSection},
    yaml::{self, At, Positions},
};

/// A policy document of a kind Palisade knows.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    NetworkPolicy(NetworkPolicy),
    PalisadeNetworkPolicy(Object<PalisadeNetworkPolicySpec>),
    PalisadeClusterNetworkPolicy(Object<PalisadeClusterNetworkPolicySpec>),
    /// Boxed: the object and its converted form are large.
    KubeArmorPolicy(Box<KubeArmorPolicy>),
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
            Self::KubeArmorPolicy(k) => k.policy.clone(),
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::NetworkPolicy(p) => &p.metadata,
            Self::PalisadeNetworkPolicy(o) => &o.metadata,
            Self::PalisadeClusterNetworkPolicy(o) => &o.metadata,
            Self::KubeArmorPolicy(k) => &k.object.metadata,
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
    pub status: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    /// 1-based line of the fault (of the document when the fault has none).
    pub line: usize,
    /// 1-based column of the fault; 0 when unknown.
    pub column: usize,
    /// `namespace/name` when the document got that far.
    pub object: Option<String>,
    pub message: String,
}

impl ParseError {
    /// An error of `file` at `line` with no column or object.
    pub fn at_line(file: &str, line: usize, message: String) -> Self {
        Self {
            file: file.to_owned(),
            line,
            column: 0,
            object: None,
            message,
        }
    }

    /// A fault at `at` of a document whose first line is line `start` of
    /// `file`; at the document's start when `at` is unknown.
    pub fn in_document(
        file: &str,
        start: usize,
        at: Option<At>,
        object: Option<String>,
        message: String,
    ) -> Self {
        Self {
            file: file.to_owned(),
            line: start + at.map_or(0, |a| a.line.saturating_sub(1)),
            column: at.map_or(0, |a| a.column),
            object,
            message,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.file, self.line)?;
        if self.column > 0 {
            write!(f, "{}:", self.column)?;
        }
        f.write_str(" ")?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// A value that parsed but is not valid, named by its field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// `spec.ingress[0].from[1].ipBlock.cidr`
    pub path: String,
    pub message: String,
}

impl Invalid {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

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

impl Head {
    /// The [`Policy::key`] of the policy this document would be, when its
    /// kind and name can be told (`default_ns` for a namespaced one without
    /// a namespace): the key its last good version is kept under.
    pub fn policy_key(&self, default_ns: &str) -> Option<String> {
        let kind = Kind::of(self.api_version.as_deref()?, self.kind.as_deref()?)?;
        let meta = self.metadata.as_ref()?;
        let ns = meta.namespace.as_deref().unwrap_or(default_ns);
        Some(kind.key(ns, meta.name.as_deref()?))
    }
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
/// applies to namespaced objects without a namespace. A text of more than
/// [`limits::MAX_DOCUMENTS_PER_FILE`] documents is one error.
pub fn parse_documents(
    text: &str,
    file: &str,
    default_ns: &str,
) -> Vec<Result<Document, ParseError>> {
    if let Err(e) = limits::check_documents(text) {
        return vec![Err(ParseError::at_line(file, 1, e))];
    }
    split_documents(text)
        .into_iter()
        .map(|(start, doc)| parse_one(&doc, start, file, default_ns))
        .collect()
}

/// The text of the block-list item that starts at `at` in `text` (a policy
/// inside a scenario file), from its first line on, indented as in the
/// file so that its columns are the file's. `None` when the node is not a
/// block-list item (`- ` then the node).
pub fn item_text(text: &str, at: At) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.get(at.line.checked_sub(1)?)?;
    let byte = first.char_indices().nth(at.column.checked_sub(1)?)?.0;
    let (before, node) = first.split_at(byte);
    let dash = before.trim_end().strip_suffix('-')?;
    if !dash.trim().is_empty() {
        return None;
    }
    // The item ends where a line is indented no deeper than its dash.
    let dash_column = dash.chars().count();
    let mut out = " ".repeat(before.chars().count());
    out.push_str(node);
    out.push('\n');
    for line in &lines[at.line..] {
        let body = line.trim_start();
        let indent = line.chars().count() - body.chars().count();
        if !body.is_empty() && !body.starts_with('#') && indent <= dash_column {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}

/// Parses one policy document that starts on line `start` of `file`.
pub fn parse_one(
    doc: &str,
    start: usize,
    file: &str,
    default_ns: &str,
) -> Result<Document, ParseError> {
    let error = |at: Option<At>, object: Option<String>, message: String| {
        ParseError::in_document(file, start, at, object, message)
    };
    let refused = |object: Option<String>| {
        move |e: yaml::Error| {
            let e = e.with_field(doc);
            error(e.at, object, e.message)
        }
    };
    // Validation runs on parsed values; their positions are looked up only
    // for the error.
    let invalid = |object: Option<String>| {
        move |e: Invalid| error(Positions::of(doc).locate(&e.path), object, e.to_string())
    };
    // A policy over a limit is refused before it is validated, at the
    // document's start: looking its field up would cost what the limit
    // spares.
    let limited = |object: Option<String>| move |e: Invalid| error(None, object, e.to_string());
    if doc.len() as u64 > limits::MAX_FILE_BYTES {
        return Err(error(
            None,
            None,
            format!(
                "a document of {} bytes, above the limit of {} bytes",
                doc.len(),
                limits::MAX_FILE_BYTES
            ),
        ));
    }
    let head: Head = yaml::from_str(doc).map_err(refused(None))?;
    let object = head.metadata.as_ref().and_then(|m| {
        let name = m.name.as_deref()?;
        Some(format!(
            "{}/{name}",
            m.namespace.as_deref().unwrap_or(default_ns)
        ))
    });
    match (head.api_version.as_deref(), head.kind.as_deref()) {
        (Some("networking.k8s.io/v1"), Some("NetworkPolicy")) => {
            let mut policy: NetworkPolicy = yaml::from_str(doc).map_err(refused(object.clone()))?;
            if policy.metadata.namespace.is_none() {
                policy.metadata.namespace = Some(default_ns.to_owned());
            }
            let spec = &policy.spec;
            limits::check_network(
                &[Some(&spec.pod_selector)],
                rules(&spec.ingress, &spec.egress).map(|(_, _, r)| r),
            )
            .map_err(limited(object.clone()))?;
            validate(&policy).map_err(invalid(object.clone()))?;
            Ok(Document::NetworkPolicy(policy))
        }
        (Some(API_VERSION), Some("PalisadeNetworkPolicy")) => {
            let mut o: Object<PalisadeNetworkPolicySpec> =
                yaml::from_str(doc).map_err(refused(object.clone()))?;
            if o.metadata.namespace.is_none() {
                o.metadata.namespace = Some(default_ns.to_owned());
            }
            let spec = &o.spec;
            limits::check_network(
                &[Some(&spec.pod_selector)],
                rules(&spec.ingress, &spec.egress).map(|(_, _, r)| r),
            )
            .and_then(|()| limits::check_sections(spec.process.as_ref(), spec.file.as_ref()))
            .map_err(limited(object.clone()))?;
            validate_namespaced(&o.spec).map_err(invalid(object.clone()))?;
            Ok(Document::PalisadeNetworkPolicy(o))
        }
        (Some(API_VERSION), Some("PalisadeClusterNetworkPolicy")) => {
            let object = head
                .metadata
                .as_ref()
                .and_then(|m| m.name.clone())
                .map(|n| format!("cluster:{n}"));
            let o: Object<PalisadeClusterNetworkPolicySpec> =
                yaml::from_str(doc).map_err(refused(object.clone()))?;
            if o.metadata.namespace.is_some() {
                return Err(invalid(object)(Invalid::new(
                    "metadata.namespace",
                    "a PalisadeClusterNetworkPolicy is cluster-scoped",
                )));
            }
            let spec = &o.spec;
            limits::check_network(
                &[
                    spec.subject.namespace_selector.as_ref(),
                    spec.subject.pod_selector.as_ref(),
                ],
                rules(&spec.ingress, &spec.egress).map(|(_, _, r)| r),
            )
            .and_then(|()| limits::check_sections(spec.process.as_ref(), spec.file.as_ref()))
            .map_err(limited(object.clone()))?;
            validate_cluster(&o.spec).map_err(invalid(object.clone()))?;
            Ok(Document::PalisadeClusterNetworkPolicy(o))
        }
        (Some(KUBEARMOR_API_VERSION), Some("KubeArmorPolicy")) => {
            let mut o: Object<KubeArmorPolicySpec> =
                yaml::from_str(doc).map_err(refused(object.clone()))?;
            limits::check_kubearmor(&o.spec).map_err(limited(object.clone()))?;
            let ns = o
                .metadata
                .namespace
                .get_or_insert_with(|| default_ns.to_owned());
            let policy =
                kubearmor::to_policy(ns, &o.metadata.name, &o.spec).map_err(invalid(object))?;
            Ok(Document::KubeArmorPolicy(Box::new(KubeArmorPolicy {
                object: o,
                policy,
            })))
        }
        (api, kind) => Err(error(
            None,
            object,
            format!(
                "unknown kind {} (apiVersion {}): expected networking.k8s.io/v1 NetworkPolicy, \
                 {API_VERSION} PalisadeNetworkPolicy or PalisadeClusterNetworkPolicy, \
                 or {KUBEARMOR_API_VERSION} KubeArmorPolicy",
                kind.unwrap_or("<none>"),
                api.unwrap_or("<none>")
            ),
        )),
    }
}

fn validate_priority(priority: Option<u32>) -> Result<(), Invalid> {
    match priority {
        Some(p) if p > MAX_PRIORITY => Err(Invalid::new(
            "spec.priority",
            format!("{p} is above the maximum {MAX_PRIORITY}"),
        )),
        _ => Ok(()),
    }
}

fn validate_sections(
    process: Option<&ProcessSection>,
    file: Option<&FileSection>,
) -> Result<(), Invalid> {
    if let Some(p) = process {
        p.validate("spec.process")?;
    }
    if let Some(f) = file {
        f.validate("spec.file")?;
    }
    Ok(())
}

pub fn validate_namespaced(spec: &PalisadeNetworkPolicySpec) -> Result<(), Invalid> {
    spec.pod_selector
        .validate()
        .map_err(|e| Invalid::new("spec.podSelector", e.to_string()))?;
    validate_priority(spec.priority)?;
    for (path, _, rule) in rules(&spec.ingress, &spec.egress) {
        if rule.action == Some(Action::Pass) {
            return Err(Invalid::new(
                format!("{path}.action"),
                "Pass is only for PalisadeClusterNetworkPolicy in the Admin tier",
            ));
        }
    }
    validate_rules(rules(&spec.ingress, &spec.egress))?;
    validate_sections(spec.process.as_ref(), spec.file.as_ref())
}

pub fn validate_cluster(spec: &PalisadeClusterNetworkPolicySpec) -> Result<(), Invalid> {
    for (name, sel) in [
        ("namespaceSelector", &spec.subject.namespace_selector),
        ("podSelector", &spec.subject.pod_selector),
    ] {
        if let Some(sel) = sel {
            sel.validate()
                .map_err(|e| Invalid::new(format!("spec.subject.{name}"), e.to_string()))?;
        }
    }
    validate_priority(spec.priority)?;
    let baseline = spec.tier == Some(ClusterTier::Baseline);
    for (path, _, rule) in rules(&spec.ingress, &spec.egress) {
        let fault = match rule.action {
            None => "required in a cluster policy (Allow, Deny or Pass)",
            Some(Action::Pass) if baseline => "Pass has nothing to pass to in the Baseline tier",
            _ => continue,
        };
        return Err(Invalid::new(format!("{path}.action"), fault));
    }
    validate_rules(rules(&spec.ingress, &spec.egress))?;
    validate_sections(spec.process.as_ref(), spec.file.as_ref())
}

/// What the API server's validation would refuse, named by field path.
pub fn validate(p: &NetworkPolicy) -> Result<(), Invalid> {
    p.spec
        .pod_selector
        .validate()
        .map_err(|e| Invalid::new("spec.podSelector", e.to_string()))?;
    for (path, _, rule) in rules(&p.spec.ingress, &p.spec.egress) {
        if rule.action.is_some() {
            return Err(Invalid::new(
                format!("{path}.action"),
                "a NetworkPolicy rule has no action (PalisadeNetworkPolicy has)",
            ));
        }
    }
    validate_rules(rules(&p.spec.ingress, &p.spec.egress))
}

/// Peers and ports of rules given as (path, peers field, rule).
fn validate_rules<'a>(
    rules: impl Iterator<Item = (String, &'static str, RuleRef<'a>)>,
) -> Result<(), Invalid> {
    for (path, peers_field, rule) in rules {
        for (j, peer) in rule.peers.iter().enumerate() {
            validate_peer(&format!("{path}.{peers_field}[{j}]"), peer)?;
        }
        for (j, port) in rule.ports.iter().enumerate() {
            validate_port(&format!("{path}.ports[{j}]"), port)?;
        }
    }
    Ok(())
}

fn validate_peer(at: &str, peer: &Peer) -> Result<(), Invalid> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err(Invalid::new(
                at,
                "ipBlock cannot be combined with a selector",
            ));
        }
        let cidr: IpNet = block.cidr.parse().map_err(|_| {
            Invalid::new(
                format!("{at}.ipBlock.cidr"),
                format!("{:?} is not a CIDR", block.cidr),
            )
        })?;
        for (k, except) in block.except.iter().enumerate() {
            let here = format!("{at}.ipBlock.except[{k}]");
            let e: IpNet = except
                .parse()
                .map_err(|_| Invalid::new(&here, format!("{except:?} is not a CIDR")))?;
            if !cidr.contains(&e) || e.prefix_len() <= cidr.prefix_len() {
                return Err(Invalid::new(
                    here,
                    format!("{except} is not strictly inside {}", block.cidr),
                ));
            }
        }
    } else if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err(Invalid::new(
            at,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        ));
    }
    for (name, sel) in [
        ("podSelector", &peer.pod_selector),
        ("namespaceSelector", &peer.namespace_selector),
    ] {
        if let Some(sel) = sel {
            sel.validate()
                .map_err(|e| Invalid::new(format!("{at}.{name}"), e.to_string()))?;
        }
    }
    Ok(())
}

fn validate_port(at: &str, port: &PolicyPort) -> Result<(), Invalid> {
    let field = |name: &str, message: String| Invalid::new(format!("{at}.{name}"), message);
    match (&port.port, port.end_port) {
        (Some(PortRef::Number(n)), end) => {
            if !(1..=65535).contains(n) {
                return Err(field("port", format!("{n} is not between 1 and 65535")));
            }
            if let Some(end) = end
                && (end < *n || end > 65535)
            {
                return Err(field(
                    "endPort",
                    format!("{end} must be between port ({n}) and 65535"),
                ));
            }
        }
        (Some(PortRef::Name(name)), end) => {
            if !valid_port_name(name) {
                return Err(field(
                    "port",
                    format!("{name:?} is not a valid port name (IANA service name)"),
                ));
            }
            if end.is_some() {
                return Err(field("endPort", "not allowed with a named port".into()));
            }
        }
        (None, Some(_)) => return Err(field("endPort", "needs port".into())),
        (None, None) => {}
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
    fn errors_name_the_line_and_column_of_a_nested_field() {
        let at = |text: &str| {
            let e = one(text).unwrap_err();
            (e.line, e.column, e.to_string())
        };
        let (line, column, shown) =
            at(&GOOD.replace("{podSelector: {}}", "{ipBlock: {cidr: 10.0.0.0/33}}"));
        assert_eq!((line, column), (8, 29), "{shown}");
        assert!(
            shown.starts_with("f.yaml:8:29: x/allow-a: spec.ingress[0].from[0].ipBlock.cidr:"),
            "{shown}"
        );
        let (line, column, shown) = at(&PNP.replace("    from:", "    form:"));
        assert_eq!((line, column), (11, 5), "{shown}");
        assert!(shown.contains("unknown field `form`"), "{shown}");
        let (line, column, shown) = at(&PNP.replace("action: Deny", "action: Pass"));
        assert_eq!((line, column), (10, 13), "{shown}");
        assert!(shown.contains("spec.ingress[0].action"), "{shown}");
        let two = format!("{GOOD}---\n{}", GOOD.replace("port: 80}", "port: 0}"));
        let e = parse_documents(&two, "f.yaml", "default")
            .remove(1)
            .unwrap_err();
        assert_eq!(
            (e.line, e.column),
            (19, 20),
            "the second document's own line: {e}"
        );
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
        assert!(err.message.contains("KubeArmorPolicy"), "{err}");
        let host = "apiVersion: security.kubearmor.com/v1\nkind: KubeArmorHostPolicy\nmetadata: {name: h}\n";
        assert!(
            one(host)
                .unwrap_err()
                .message
                .contains("unknown kind KubeArmorHostPolicy")
        );
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
        // An empty list, as the API server defaults it: as if absent.
        let empty = GOOD.replace("  ingress:\n", "  policyTypes: []\n  ingress:\n");
        let Document::NetworkPolicy(p) = one(&empty).unwrap() else {
            unreachable!()
        };
        assert_eq!(p.policy_types(), (true, false));
        assert!(crate::model::policy::Policy::from(&p).ingress.is_some());
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
    fn palisade_kinds_carry_patterns_sources_and_owner_only() {
        let text = PNP
            .replace(
                "rules: [{action: Allow, dirs: [{path: /usr/bin/, recursive: true}]}]",
                "rules: [{action: Allow, dirs: [{path: /usr/bin/, recursive: true}], patterns: ['/opt/**/bin/*'], ownerOnly: true}]",
            )
            .replace(
                "rules: [{action: Block, paths: [/etc/shadow]}]",
                "rules: [{action: Block, paths: [/etc/shadow], fromSource: [/usr/bin/cat], readOnly: true}]",
            );
        let p = one(&text).unwrap().policy();
        assert_eq!(p.lsm_meta, super::super::policy::LsmMeta::default());
        let process = &p.process.unwrap().rules[0];
        assert_eq!(process.patterns, ["/opt/**/bin/*"]);
        assert!(process.owner_only && process.from_source.is_empty());
        let file = &p.file.unwrap().rules[0];
        assert_eq!(file.from_source, ["/usr/bin/cat"]);
        assert!(file.read_only && !file.owner_only);
        for (from, to, field) in [
            (
                "[/etc/shadow]}]",
                "[/etc/shadow], patterns: ['/etc/{a,b}']}]",
                "spec.file.rules[0].patterns[0]",
            ),
            (
                "{action: Block, paths: [/etc/shadow]}",
                "{action: Allow, paths: [/etc/shadow], readOnly: true}",
                "spec.file.rules[0].readOnly",
            ),
        ] {
            let e = one(&PNP.replace(from, to)).unwrap_err();
            assert!(e.message.starts_with(field), "{field}: {e}");
            assert!(e.line >= 15 && e.column > 0, "{e}");
        }
        let long = format!("/{}", "x".repeat(super::super::process_file::MAX_RULE_PATH));
        let e = one(&PNP.replace("/etc/shadow", &long)).unwrap_err();
        assert!(
            e.message.starts_with("spec.file.rules[0].paths[0]") && e.message.contains("250"),
            "{e}"
        );
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
