//! KubeArmor's `security.kubearmor.com/v1 KubeArmorPolicy`, accepted as
//! KubeArmor's users write it, for its process and file parts; converted
//! into the common [`Policy`] with the same process and file rules as
//! Palisade's own kinds (`process_file.rs`).
//!
//! Field names and casing are KubeArmor's (`KubeArmorPolicySpec` and
//! `common.go` in its controller's API). Parsing is strict: an unknown field
//! is an error naming it, and the sections and options Palisade does not
//! enforce (`network`, `capabilities`, `syscalls`, `presets`, `apparmor`,
//! `selinux`; a rule's `pts`, `allowedArgs`, `execname`; `fromSource`
//! directories) are refused by name, never silently dropped: a policy that
//! parses is a policy Palisade enforces in full.
//!
//! Where Palisade differs from KubeArmor, on purpose:
//! - every rule needs an action from itself, its section or `spec.action`;
//!   KubeArmor quietly takes Block, Palisade asks for it to be written;
//! - `matchExpressions` (key `label`, values `k=v`) become a label selector:
//!   `In` selects pods with any of its labels, which must then share one
//!   key (a label selector has no "or" across keys); `NotIn` excludes pods
//!   with any of its labels; all of it is ANDed with `matchLabels`, as
//!   KubeArmor's documentation says;
//! - `matchLabels` on `kubearmor.io/container.name` is refused: Palisade's
//!   rules apply to whole pods (their cgroup), not to single containers;
//! - `matchPatterns` are globs of `*`, `?` and `**` only (`glob.rs`);
//! - `severity`, `message` and `tags` are carried per policy ([`LsmMeta`]):
//!   the policy's own, else for severity the highest a section or rule gives
//!   and for the message the first; the tags of all levels together.
//!
//! `readOnly` on an Allow rule keeps KubeArmor's meaning (reads allowed,
//! writes not): see `process_file.rs`.

use serde::Deserialize;
use serde_json::Value;

use super::{
    Labels,
    palisade::DEFAULT_PRIORITY,
    parse::{Invalid, Object},
    policy::{Kind, LsmMeta, Policy, Tier},
    process_file::{
        DirMatch, FileRule, FileSection, LsmAction, ProcessRule, ProcessSection, check_pattern,
        check_rule_path,
    },
    selector::{LabelSelector, Operator, Requirement},
};

pub const KUBEARMOR_API_VERSION: &str = "security.kubearmor.com/v1";

/// KubeArmor's `matchLabels` key for containers within a pod.
const CONTAINER_NAME_LABEL: &str = "kubearmor.io/container.name";

/// A parsed KubeArmorPolicy and what it converts into.
#[derive(Clone, Debug, PartialEq)]
pub struct KubeArmorPolicy {
    pub object: Object<KubeArmorPolicySpec>,
    pub policy: Policy,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeArmorPolicySpec {
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub process: Option<Section>,
    #[serde(default)]
    pub file: Option<Section>,
    #[serde(default)]
    pub action: Option<LsmAction>,
    #[serde(default)]
    pub severity: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    // Read only to be refused by name (see the module's docs).
    #[serde(default)]
    pub network: Option<Value>,
    #[serde(default)]
    pub capabilities: Option<Value>,
    #[serde(default)]
    pub syscalls: Option<Value>,
    #[serde(default)]
    pub presets: Option<Value>,
    #[serde(default)]
    pub apparmor: Option<Value>,
    #[serde(default)]
    pub selinux: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Labels,
    #[serde(default)]
    pub match_expressions: Vec<Expression>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    /// `label` (KubeArmorClusterPolicy's `namespace` is not for this kind).
    pub key: String,
    pub operator: SetOperator,
    /// `key=value` labels.
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum SetOperator {
    In,
    NotIn,
}

/// `process` or `file`: the same shape, except that only file rules have
/// `readOnly` and only process paths have `allowedArgs` and `execname`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Section {
    #[serde(default)]
    pub match_paths: Vec<MatchPath>,
    #[serde(default)]
    pub match_directories: Vec<MatchDirectory>,
    #[serde(default)]
    pub match_patterns: Vec<MatchPattern>,
    #[serde(default)]
    pub action: Option<LsmAction>,
    #[serde(default)]
    pub severity: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchPath {
    /// Required by Palisade (KubeArmor allows `execname` instead).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub read_only: Option<bool>,
    #[serde(default)]
    pub owner_only: bool,
    #[serde(default)]
    pub from_source: Vec<Source>,
    #[serde(default)]
    pub action: Option<LsmAction>,
    #[serde(default)]
    pub severity: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub pts: Option<Value>,
    #[serde(default)]
    pub allowed_args: Option<Value>,
    #[serde(default, rename = "execname")]
    pub exec_name: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchDirectory {
    pub dir: String,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default)]
    pub read_only: Option<bool>,
    #[serde(default)]
    pub owner_only: bool,
    #[serde(default)]
    pub from_source: Vec<Source>,
    #[serde(default)]
    pub action: Option<LsmAction>,
    #[serde(default)]
    pub severity: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub pts: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchPattern {
    pub pattern: String,
    #[serde(default)]
    pub read_only: Option<bool>,
    #[serde(default)]
    pub owner_only: bool,
    #[serde(default)]
    pub action: Option<LsmAction>,
    #[serde(default)]
    pub severity: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An entry of `fromSource`: KubeArmor's process and file rules name
/// executables by `path`; the `dir` form (its syscall rules') is refused.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub dir: Option<Value>,
    #[serde(default)]
    pub recursive: Option<Value>,
}

/// Converts a KubeArmorPolicy of `namespace`, refusing with the field at
/// fault whatever Palisade would not enforce as written.
pub fn to_policy(
    namespace: &str,
    name: &str,
    spec: &KubeArmorPolicySpec,
) -> Result<Policy, Invalid> {
    refuse_unenforced(spec)?;
    let pod_selector = selector(&spec.selector)?;
    let mut meta = Meta::default();
    meta.add("spec", spec.severity, spec.message.as_deref(), &spec.tags)?;
    let process = spec
        .process
        .as_ref()
        .map(|s| convert(s, Side::Process, spec.action, &mut meta))
        .transpose()?;
    let file = spec
        .file
        .as_ref()
        .map(|s| convert(s, Side::File, spec.action, &mut meta))
        .transpose()?;
    let process = process.map(|rules| ProcessSection {
        posture: None,
        rules: rules.into_iter().map(Draft::into_process).collect(),
    });
    let file = file.map(|rules| FileSection {
        posture: None,
        rules: rules.into_iter().map(Draft::into_file).collect(),
    });
    let count =
        process.as_ref().map_or(0, |p| p.rules.len()) + file.as_ref().map_or(0, |f| f.rules.len());
    if count == 0 {
        return Err(Invalid::new(
            "spec",
            "no process or file rules: a KubeArmorPolicy needs matchPaths, matchDirectories \
             or matchPatterns under process or file",
        ));
    }
    Ok(Policy {
        kind: Kind::KubeArmorPolicy,
        namespace: Some(namespace.to_owned()),
        name: name.to_owned(),
        tier: Tier::Namespace,
        priority: DEFAULT_PRIORITY,
        audit: false,
        namespace_selector: None,
        pod_selector,
        ingress: None,
        egress: None,
        process,
        file,
        lsm_meta: meta.into_lsm_meta(),
    })
}

fn refuse_unenforced(spec: &KubeArmorPolicySpec) -> Result<(), Invalid> {
    let sections = [
        ("network", &spec.network),
        ("capabilities", &spec.capabilities),
        ("syscalls", &spec.syscalls),
        ("presets", &spec.presets),
        ("apparmor", &spec.apparmor),
        ("selinux", &spec.selinux),
    ];
    match sections.iter().find(|(_, v)| v.is_some()) {
        Some((name, _)) => Err(Invalid::new(
            format!("spec.{name}"),
            format!("Palisade does not enforce {name} rules; remove the section"),
        )),
        None => Ok(()),
    }
}

/// KubeArmor's selector as a label selector (see the module's docs).
fn selector(s: &Selector) -> Result<LabelSelector, Invalid> {
    if s.match_labels.contains_key(CONTAINER_NAME_LABEL) {
        return Err(Invalid::new(
            format!("spec.selector.matchLabels.{CONTAINER_NAME_LABEL}"),
            "Palisade applies process and file rules to whole pods and cannot select containers",
        ));
    }
    let mut out = LabelSelector {
        match_labels: s.match_labels.clone(),
        match_expressions: Vec::new(),
    };
    // `In` across every expression: any of these (key, value) labels.
    let mut any_of: Option<Requirement> = None;
    for (i, e) in s.match_expressions.iter().enumerate() {
        let at = format!("spec.selector.matchExpressions[{i}]");
        if e.key != "label" {
            return Err(Invalid::new(
                format!("{at}.key"),
                format!(
                    "{:?}: a KubeArmorPolicy selects by `label` (values `key=value`)",
                    e.key
                ),
            ));
        }
        if e.values.is_empty() {
            return Err(Invalid::new(
                format!("{at}.values"),
                "needs at least one label",
            ));
        }
        for (j, value) in e.values.iter().enumerate() {
            let here = format!("{at}.values[{j}]");
            let Some((key, value)) = value.split_once('=') else {
                return Err(Invalid::new(
                    here,
                    format!("{value:?} is not a `key=value` label"),
                ));
            };
            match (e.operator, &mut any_of) {
                (SetOperator::NotIn, _) => out.match_expressions.push(Requirement {
                    key: key.to_owned(),
                    operator: Operator::NotIn,
                    values: vec![value.to_owned()],
                }),
                (SetOperator::In, Some(r)) if r.key != key => {
                    return Err(Invalid::new(
                        here,
                        format!(
                            "In labels with different keys ({} and {key}) mean any of them, \
                             which a label selector cannot say: use one key",
                            r.key
                        ),
                    ));
                }
                (SetOperator::In, Some(r)) => r.values.push(value.to_owned()),
                (SetOperator::In, None) => {
                    any_of = Some(Requirement {
                        key: key.to_owned(),
                        operator: Operator::In,
                        values: vec![value.to_owned()],
                    });
                }
            }
        }
    }
    out.match_expressions.extend(any_of);
    out.validate()
        .map_err(|e| Invalid::new("spec.selector", e.to_string()))?;
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Process,
    File,
}

impl Side {
    const fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::File => "file",
        }
    }
}

/// One rule of the common form under construction: KubeArmor entries with
/// the same action, sources and options share one.
#[derive(Debug, PartialEq)]
struct Draft {
    action: LsmAction,
    from_source: Vec<String>,
    owner_only: bool,
    read_only: bool,
    paths: Vec<String>,
    dirs: Vec<DirMatch>,
    patterns: Vec<String>,
}

impl Draft {
    fn into_process(self) -> ProcessRule {
        ProcessRule {
            action: self.action,
            paths: self.paths,
            dirs: self.dirs,
            patterns: self.patterns,
            from_source: self.from_source,
            owner_only: self.owner_only,
        }
    }

    fn into_file(self) -> FileRule {
        FileRule {
            action: self.action,
            paths: self.paths,
            dirs: self.dirs,
            patterns: self.patterns,
            from_source: self.from_source,
            read_only: self.read_only,
            owner_only: self.owner_only,
        }
    }
}

/// What one KubeArmor entry says besides what it matches.
struct Entry<'a> {
    at: String,
    action: Option<LsmAction>,
    read_only: Option<bool>,
    owner_only: bool,
    from_source: &'a [Source],
    severity: Option<i64>,
    message: Option<&'a str>,
    tags: &'a [String],
    pts: bool,
}

/// What an entry matches.
enum Target {
    Path(String),
    Dir(DirMatch),
    Pattern(String),
}

/// A section's entries as rules, grouped in order of first appearance.
fn convert(
    s: &Section,
    side: Side,
    policy_action: Option<LsmAction>,
    meta: &mut Meta,
) -> Result<Vec<Draft>, Invalid> {
    let section = format!("spec.{}", side.name());
    meta.add(&section, s.severity, s.message.as_deref(), &s.tags)?;
    let mut entries = Vec::new();
    for (i, p) in s.match_paths.iter().enumerate() {
        let at = format!("{section}.matchPaths[{i}]");
        for (field, given) in [
            ("allowedArgs", p.allowed_args.is_some()),
            ("execname", p.exec_name.is_some()),
        ] {
            if given {
                let why = match side {
                    Side::Process => "Palisade matches executables by path only",
                    Side::File => "not a field of file rules",
                };
                return Err(Invalid::new(format!("{at}.{field}"), why));
            }
        }
        let path = p
            .path
            .clone()
            .ok_or_else(|| Invalid::new(format!("{at}.path"), "required"))?;
        check_rule_path(&path, false).map_err(|e| Invalid::new(format!("{at}.path"), e))?;
        let entry = Entry {
            at,
            action: p.action,
            read_only: p.read_only,
            owner_only: p.owner_only,
            from_source: &p.from_source,
            severity: p.severity,
            message: p.message.as_deref(),
            tags: &p.tags,
            pts: p.pts.is_some(),
        };
        entries.push((entry, Target::Path(path)));
    }
    for (i, d) in s.match_directories.iter().enumerate() {
        let at = format!("{section}.matchDirectories[{i}]");
        check_rule_path(&d.dir, true).map_err(|e| Invalid::new(format!("{at}.dir"), e))?;
        let entry = Entry {
            at,
            action: d.action,
            read_only: d.read_only,
            owner_only: d.owner_only,
            from_source: &d.from_source,
            severity: d.severity,
            message: d.message.as_deref(),
            tags: &d.tags,
            pts: d.pts.is_some(),
        };
        let dir = DirMatch {
            path: d.dir.clone(),
            recursive: d.recursive,
        };
        entries.push((entry, Target::Dir(dir)));
    }
    for (i, p) in s.match_patterns.iter().enumerate() {
        let at = format!("{section}.matchPatterns[{i}]");
        check_pattern(&p.pattern).map_err(|e| Invalid::new(format!("{at}.pattern"), e))?;
        let entry = Entry {
            at,
            action: p.action,
            read_only: p.read_only,
            owner_only: p.owner_only,
            from_source: &[],
            severity: p.severity,
            message: p.message.as_deref(),
            tags: &p.tags,
            pts: false,
        };
        entries.push((entry, Target::Pattern(p.pattern.clone())));
    }
    let mut drafts: Vec<Draft> = Vec::new();
    for (entry, target) in entries {
        let rule = draft(&entry, side, s.action.or(policy_action))?;
        meta.add(&entry.at, entry.severity, entry.message, entry.tags)?;
        let same = drafts.iter().position(|d| {
            (d.action, d.owner_only, d.read_only, &d.from_source)
                == (
                    rule.action,
                    rule.owner_only,
                    rule.read_only,
                    &rule.from_source,
                )
        });
        let i = same.unwrap_or_else(|| {
            drafts.push(rule);
            drafts.len() - 1
        });
        let into = &mut drafts[i];
        match target {
            Target::Path(p) => into.paths.push(p),
            Target::Dir(d) => into.dirs.push(d),
            Target::Pattern(p) => into.patterns.push(p),
        }
    }
    Ok(drafts)
}

/// An entry's empty rule: its action, options and sources, checked.
fn draft(e: &Entry<'_>, side: Side, inherited: Option<LsmAction>) -> Result<Draft, Invalid> {
    let at = &e.at;
    if e.pts {
        return Err(Invalid::new(
            format!("{at}.pts"),
            "Palisade does not enforce terminal (pts) conditions",
        ));
    }
    if side == Side::Process && e.read_only.is_some() {
        return Err(Invalid::new(
            format!("{at}.readOnly"),
            "readOnly is for file rules",
        ));
    }
    let action = e.action.or(inherited).ok_or_else(|| {
        Invalid::new(
            format!("{at}.action"),
            format!(
                "no action: give one here, in spec.{}.action or in spec.action \
                 (Allow, Block or Audit)",
                side.name()
            ),
        )
    })?;
    let mut from_source = Vec::with_capacity(e.from_source.len());
    for (k, src) in e.from_source.iter().enumerate() {
        let here = format!("{at}.fromSource[{k}]");
        if src.dir.is_some() || src.recursive.is_some() {
            let field = if src.dir.is_some() {
                "dir"
            } else {
                "recursive"
            };
            return Err(Invalid::new(
                format!("{here}.{field}"),
                "Palisade does not model fromSource directories: name each executable by path",
            ));
        }
        let path = src
            .path
            .clone()
            .ok_or_else(|| Invalid::new(format!("{here}.path"), "required"))?;
        check_rule_path(&path, false).map_err(|e| Invalid::new(format!("{here}.path"), e))?;
        from_source.push(path);
    }
    Ok(Draft {
        action,
        from_source,
        owner_only: e.owner_only,
        read_only: e.read_only.unwrap_or(false),
        paths: Vec::new(),
        dirs: Vec::new(),
        patterns: Vec::new(),
    })
}

/// Severity, message and tags gathered from every level (see the module's
/// docs for how they fold into one [`LsmMeta`]).
#[derive(Default)]
struct Meta {
    policy_severity: Option<u8>,
    highest: Option<u8>,
    policy_message: Option<String>,
    first_message: Option<String>,
    tags: Vec<String>,
}

impl Meta {
    /// `at` is `spec` for the policy's own.
    fn add(
        &mut self,
        at: &str,
        severity: Option<i64>,
        message: Option<&str>,
        tags: &[String],
    ) -> Result<(), Invalid> {
        let severity = severity
            .map(|s| {
                u8::try_from(s)
                    .ok()
                    .filter(|s| (1..=10).contains(s))
                    .ok_or_else(|| {
                        Invalid::new(format!("{at}.severity"), format!("{s} is not within 1-10"))
                    })
            })
            .transpose()?;
        if at == "spec" {
            self.policy_severity = severity;
            self.policy_message = message.map(str::to_owned);
        } else {
            self.highest = self.highest.max(severity);
            if self.first_message.is_none() {
                self.first_message = message.map(str::to_owned);
            }
        }
        for tag in tags {
            if !self.tags.contains(tag) {
                self.tags.push(tag.clone());
            }
        }
        Ok(())
    }

    fn into_lsm_meta(self) -> LsmMeta {
        LsmMeta {
            severity: self.policy_severity.or(self.highest),
            message: self.policy_message.or(self.first_message),
            tags: self.tags,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse::{Document, ParseError, parse_documents};

    /// In the shape of KubeArmor's own examples (its policy specification
    /// and the `ksp-*` samples): a pod's shell and package manager blocked,
    /// its secrets readable by one program only, writes to its binaries
    /// blocked.
    const KSP: &str = "
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata:
  name: ksp-wordpress-lockdown
  namespace: wordpress-mysql
spec:
  severity: 7
  message: wordpress lockdown
  tags: [MITRE, T1059]
  selector:
    matchLabels:
      app: wordpress
    matchExpressions:
    - key: label
      operator: In
      values: [tier=frontend, tier=web]
    - key: label
      operator: NotIn
      values: [debug=true]
  process:
    severity: 9
    tags: [shell]
    matchPaths:
    - path: /bin/bash
    - path: /usr/bin/apt
      action: Audit
    - path: /bin/sh
    matchDirectories:
    - dir: /sbin/
      recursive: true
    matchPatterns:
    - pattern: /**/nc*
  file:
    matchPaths:
    - path: /var/www/html/wp-config.php
      fromSource:
      - path: /usr/sbin/apache2
      readOnly: true
      action: Allow
    - path: /etc/shadow
      ownerOnly: true
    matchDirectories:
    - dir: /usr/bin/
      recursive: true
      readOnly: true
      message: binaries are read-only
  action: Block
";

    fn one(text: &str) -> Result<Document, ParseError> {
        parse_documents(text, "ksp.yaml", "default").remove(0)
    }

    fn policy(text: &str) -> Policy {
        one(text).unwrap().policy()
    }

    fn error(text: &str) -> ParseError {
        one(text).unwrap_err()
    }

    #[test]
    fn a_kubearmor_policy_parses_and_converts() {
        let p = policy(KSP);
        assert_eq!(p.kind, Kind::KubeArmorPolicy);
        assert_eq!(p.key(), "kubearmor:wordpress-mysql/ksp-wordpress-lockdown");
        assert_eq!(p.tier, Tier::Namespace);
        assert!(p.ingress.is_none() && p.egress.is_none());
        assert!(!p.isolates(false) && !p.isolates(true));
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let sel = &p.pod_selector;
        assert!(sel.matches(&labels(&[("app", "wordpress"), ("tier", "web")])));
        assert!(sel.matches(&labels(&[("app", "wordpress"), ("tier", "frontend")])));
        assert!(!sel.matches(&labels(&[("app", "wordpress"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[
            ("app", "wordpress"),
            ("tier", "web"),
            ("debug", "true")
        ])));
        assert!(!sel.matches(&labels(&[("tier", "web")])));

        let process = p.process.as_ref().unwrap();
        assert_eq!(process.posture, None, "the namespace's posture decides");
        let want = [
            ProcessRule {
                action: LsmAction::Block,
                paths: vec!["/bin/bash".into(), "/bin/sh".into()],
                dirs: vec![DirMatch {
                    path: "/sbin/".into(),
                    recursive: true,
                }],
                patterns: vec!["/**/nc*".into()],
                from_source: vec![],
                owner_only: false,
            },
            ProcessRule {
                action: LsmAction::Audit,
                paths: vec!["/usr/bin/apt".into()],
                dirs: vec![],
                patterns: vec![],
                from_source: vec![],
                owner_only: false,
            },
        ];
        assert_eq!(process.rules, want);

        let file = p.file.as_ref().unwrap();
        assert_eq!(file.rules.len(), 3, "{:#?}", file.rules);
        let config = &file.rules[0];
        assert_eq!(config.action, LsmAction::Allow);
        assert!(config.read_only, "KubeArmor's readOnly Allow: reads only");
        assert_eq!(config.from_source, ["/usr/sbin/apache2"]);
        assert_eq!(config.paths, ["/var/www/html/wp-config.php"]);
        let shadow = &file.rules[1];
        assert_eq!(
            (shadow.action, shadow.owner_only, shadow.read_only),
            (LsmAction::Block, true, false)
        );
        let bins = &file.rules[2];
        assert_eq!((bins.action, bins.read_only), (LsmAction::Block, true));
        assert_eq!(bins.dirs[0].path, "/usr/bin/");

        assert_eq!(
            p.lsm_meta,
            LsmMeta {
                severity: Some(7),
                message: Some("wordpress lockdown".into()),
                tags: vec!["MITRE".into(), "T1059".into(), "shell".into()],
            }
        );
    }

    #[test]
    fn a_rule_takes_its_own_action_then_its_sections_then_the_policys() {
        let text = KSP.replace("  action: Block\n", "");
        let e = error(&text);
        assert!(e.message.contains("spec.action"), "{e}");
        assert!(
            e.message
                .starts_with("spec.process.matchPaths[0].action: no action"),
            "{e}"
        );
        let text = KSP
            .replace("  action: Block\n", "")
            .replace("    severity: 9\n", "    severity: 9\n    action: Audit\n");
        let e = error(&text);
        assert!(
            e.message.starts_with("spec.file.matchPaths[1].action"),
            "the process section has its own now: {e}"
        );
        let text = text.replace("  file:\n", "  file:\n    action: Block\n");
        let p = policy(&text);
        let actions: Vec<LsmAction> = p.process.unwrap().rules.iter().map(|r| r.action).collect();
        assert_eq!(actions, [LsmAction::Audit], "section's Audit, rule's Audit");
        let file: Vec<LsmAction> = p.file.unwrap().rules.iter().map(|r| r.action).collect();
        assert_eq!(file, [LsmAction::Allow, LsmAction::Block, LsmAction::Block]);
    }

    #[test]
    fn sections_palisade_does_not_enforce_are_refused_by_name() {
        for (section, body) in [
            ("network", "{matchProtocols: [{protocol: tcp}]}"),
            (
                "capabilities",
                "{matchCapabilities: [{capability: net_raw}]}",
            ),
            ("syscalls", "{matchSyscalls: [{syscall: [unlink]}]}"),
            ("presets", "[{name: filelessExec}]"),
            ("apparmor", "'profile x {}'"),
            ("selinux", "{matchVolumeMounts: []}"),
        ] {
            let text = KSP.replace(
                "  action: Block\n",
                &format!("  action: Block\n  {section}: {body}\n"),
            );
            let e = error(&text);
            assert!(
                e.message.starts_with(&format!(
                    "spec.{section}: Palisade does not enforce {section} rules; remove the section"
                )),
                "{section}: {e}"
            );
            assert!(e.line >= 49 && e.column > 0, "{section}: {e}");
        }
        for (from, to, field) in [
            (
                "      - path: /usr/sbin/apache2\n",
                "      - dir: /usr/sbin/\n",
                "spec.file.matchPaths[0].fromSource[0].dir",
            ),
            (
                "    - path: /bin/bash\n",
                "    - path: /bin/bash\n      pts: true\n",
                "spec.process.matchPaths[0].pts",
            ),
            (
                "    - path: /bin/bash\n",
                "    - path: /bin/bash\n      allowedArgs: [-c]\n",
                "spec.process.matchPaths[0].allowedArgs",
            ),
            (
                "    - path: /bin/bash\n",
                "    - execname: bash\n",
                "spec.process.matchPaths[0].execname",
            ),
            (
                "    - path: /bin/bash\n",
                "    - path: /bin/bash\n      readOnly: true\n",
                "spec.process.matchPaths[0].readOnly",
            ),
            (
                "      app: wordpress\n",
                "      app: wordpress\n      kubearmor.io/container.name: '[wp]'\n",
                "spec.selector.matchLabels.kubearmor.io/container.name",
            ),
        ] {
            assert!(KSP.contains(from), "{from}");
            let e = error(&KSP.replacen(from, to, 1));
            assert!(e.message.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_line_and_column() {
        let e = error(&KSP.replace(
            "      recursive: true\n      readOnly",
            "      recursiv: true\n      readOnly",
        ));
        assert!(e.message.contains("unknown field `recursiv`"), "{e}");
        assert_eq!((e.line, e.column), (45, 7), "{e}");
        assert_eq!(
            e.object.as_deref(),
            Some("wordpress-mysql/ksp-wordpress-lockdown")
        );
        let e = error(&KSP.replace("  selector:", "  selektor:"));
        assert!(e.to_string().starts_with("ksp.yaml:11:3: "), "{e}");
        assert!(e.message.contains("selektor"), "{e}");
        let e = error(&KSP.replace("action: Audit", "action: audit"));
        assert!(
            e.message.contains("audit"),
            "KubeArmor's enum is Allow, Audit, Block: {e}"
        );
    }

    #[test]
    fn values_are_checked_with_their_field() {
        let over = format!("/{}", "a".repeat(MAX));
        for (from, to, field) in [
            (
                "- path: /bin/sh\n",
                "- path: bin/sh\n",
                "spec.process.matchPaths[2].path",
            ),
            (
                "- dir: /sbin/\n",
                "- dir: /sbin\n",
                "spec.process.matchDirectories[0].dir",
            ),
            (
                "/**/nc*",
                "/**/nc[at]",
                "spec.process.matchPatterns[0].pattern",
            ),
            (
                "- path: /usr/sbin/apache2",
                "- path: apache2",
                "spec.file.matchPaths[0].fromSource[0].path",
            ),
            ("  severity: 7\n", "  severity: 11\n", "spec.severity"),
            (
                "    severity: 9\n",
                "    severity: 0\n",
                "spec.process.severity",
            ),
            (
                "values: [tier=frontend, tier=web]",
                "values: [tier=frontend, role=web]",
                "spec.selector.matchExpressions[0].values[1]",
            ),
            (
                "values: [debug=true]",
                "values: [debug]",
                "spec.selector.matchExpressions[1].values[0]",
            ),
            (
                "- key: label\n",
                "- key: namespace\n",
                "spec.selector.matchExpressions[0].key",
            ),
            (
                "- path: /etc/shadow\n",
                &format!("- path: {over}\n"),
                "spec.file.matchPaths[1].path",
            ),
        ] {
            assert!(KSP.contains(from), "{from}");
            let e = error(&KSP.replacen(from, to, 1));
            assert!(e.message.starts_with(field), "{field}: {e}");
        }
        let e = error(&KSP.replacen("- path: /etc/shadow\n", &format!("- path: {over}\n"), 1));
        assert!(e.message.contains("limit of 250"), "{e}");
    }

    const MAX: usize = crate::model::process_file::MAX_RULE_PATH;

    #[test]
    fn a_policy_without_process_or_file_rules_is_refused() {
        let text = "
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: empty}
spec:
  selector: {matchLabels: {app: a}}
  process: {}
  action: Block
";
        let e = error(text);
        assert!(e.message.contains("no process or file rules"), "{e}");
        assert_eq!(e.object.as_deref(), Some("default/empty"));
    }
}
