//! Process and file rules: the per-pod rule sets the LSM programs read
//! (`ebpf_common::lsm`), and what this node cannot enforce of them.
//!
//! For one operation on one path the most specific rule wins: a file's own
//! rule, else the deepest directory that covers it (a non-recursive one
//! only covers its direct children), else the section's default. Among
//! rules at the same place, Block beats Audit beats Allow, whatever policy
//! or kind they came from. `readOnly` limits a Block or Audit rule to
//! writes and an Allow rule to reads; the operation a rule does not cover
//! is decided as if the rule were not there. The kernel's trie finds the
//! most specific entry; everything else is resolved here, so each entry
//! carries its verdict for reads and writes, and a non-recursive directory
//! also the verdict for what lies deeper than its children.
//!
//! The default applies only where the pod has an Allow rule in that
//! section: Palisade's `posture: Allowlist` blocks what no rule lists,
//! `posture: Denylist` allows it, and otherwise the namespace annotation
//! decides (`kubearmor-file-posture`, `kubearmor-process-posture`; audit
//! when absent, as in KubeArmor). Without Allow rules, what no rule lists
//! is allowed.

use std::collections::{BTreeMap, BTreeSet};

use super::lsm_guard::guard_file_sets;
pub use super::patterns::PatternRule;
use super::patterns::{refusal, states};

use ebpf_common::lsm::{
    MAX_RULE_PATH, PathRule, RuleData, Verdict, action, entry_kind, op, verdict_flags,
};

use crate::{
    identity::stable_id,
    model::{
        Namespace, Pod, Policy, Snapshot, glob,
        policy::LsmMeta,
        posture::{DefaultPosture, namespace_postures},
        process_file::{DirMatch, LsmAction, Posture},
    },
};

/// One section's rule set: every trie entry with its prefix length and
/// path bytes (a file's with its NUL), sorted, the root entry first.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleSet {
    pub entries: Vec<(u32, Vec<u8>, PathRuleOrd)>,
    /// `fromSource`: the set that applies instead to a process running
    /// this executable (its path, without NUL), by path.
    pub sources: Vec<(Vec<u8>, RuleSet)>,
    /// Patterns, for paths whose most specific entry is not a file's own:
    /// a pattern names files, so one that matches decides over any
    /// directory rule and the default (see [`super::patterns`]).
    pub patterns: Vec<PatternRule>,
}

/// A [`PathRule`] that sorts, so that equal sets can be shared by pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathRuleOrd(pub PathRule);

impl PartialOrd for PathRuleOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PathRuleOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |r: &PathRule| {
            let v = |v: &Verdict| (v.action, v.flags, v.policy);
            (
                r.len,
                r.kind,
                r.direct.map(|x| v(&x)),
                r.deeper.map(|x| v(&x)),
            )
        };
        key(&self.0).cmp(&key(&other.0))
    }
}

impl RuleSet {
    /// Whether any verdict of the set or of its `fromSource` sets blocks:
    /// an entry's (the root's default included), a pattern's
    /// ([`ebpf_common::lsm::CAN_BLOCK`]).
    pub fn can_block(&self) -> bool {
        let blocks = |v: &Verdict| v.action == action::BLOCK;
        self.entries
            .iter()
            .any(|(_, _, r)| r.0.direct.iter().any(blocks) || r.0.deeper.iter().any(blocks))
            || self.patterns.iter().any(|p| p.verdict.iter().any(blocks))
            || self.sources.iter().any(|(_, own)| own.can_block())
    }

    /// The `fromSource` keys under set id `set`, with their sets.
    pub fn source_keys(&self, set: u32) -> impl Iterator<Item = (u32, RuleData, &RuleSet)> + '_ {
        self.sources.iter().filter_map(move |(exe, own)| {
            let (prefixlen, data) = RuleData::entry(set, exe, true)?;
            Some((prefixlen, data, own))
        })
    }

    /// The kernel key of each entry under set id `set`.
    pub fn keys(&self, set: u32) -> impl Iterator<Item = (u32, RuleData, PathRule)> + '_ {
        self.entries.iter().filter_map(move |(_, path, rule)| {
            let file = path.last() == Some(&0);
            let bytes = if file {
                &path[..path.len() - 1]
            } else {
                &path[..]
            };
            let (prefixlen, data) = if bytes.is_empty() && !file {
                RuleData::root(set)
            } else {
                RuleData::entry(set, bytes, file)?
            };
            Some((prefixlen, data, rule.0))
        })
    }
}

/// A local pod's rule sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRules {
    /// The pod's cgroup v2 directory.
    pub cgroup: String,
    pub process: Option<RuleSet>,
    pub file: Option<RuleSet>,
}

/// The process and file side of one node's desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LsmDesired {
    /// By `namespace/pod`: the local pods some policy gives rules.
    pub pods: BTreeMap<String, PodRules>,
    /// What policies say that this node does not enforce, by policy key:
    /// each reason once. A policy listed here is at best partly enforced.
    pub not_enforced: BTreeMap<String, BTreeSet<String>>,
    /// Policy ids (in verdicts, counters and events) by policy key.
    pub policies: BTreeMap<String, u32>,
    /// Pods selected by process or file rules whose cgroup the source did
    /// not give (on other nodes, or not known here), with those policies.
    pub selected_without_cgroup: BTreeMap<String, Vec<String>>,
    /// KubeArmor's `severity`, `message` and `tags`, by policy id, for the
    /// events of its rules (policies that have any).
    pub meta: BTreeMap<u32, LsmMeta>,
}

/// Why nothing of a process or file section is enforced on a node where
/// the LSM programs cannot run (`reason`: BPF LSM inactive, or the
/// programs refused by this kernel).
pub fn lsm_inactive(reason: &str) -> String {
    format!("process and file rules are not enforced on this node: {reason}")
}

/// One rule as the resolver sees it.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    action: LsmAction,
    /// Which operations it covers, by [`op`] index.
    covers: [bool; 2],
    owner_only: bool,
    policy: u32,
}

/// The rules at one place of a section.
#[derive(Default)]
struct Place {
    /// A file's own rules.
    file: Vec<Candidate>,
    /// A directory's rules for everything below it.
    recursive: Vec<Candidate>,
    /// A directory's rules for its direct children only.
    children: Vec<Candidate>,
}

fn rank(a: LsmAction) -> u8 {
    match a {
        LsmAction::Allow => action::ALLOW,
        LsmAction::Audit => action::AUDIT,
        LsmAction::Block => action::BLOCK,
    }
}

/// The winning verdict among `rules` for operation `which`, if any covers it.
fn resolve<'a>(rules: impl Iterator<Item = &'a Candidate>, which: usize) -> Option<Verdict> {
    resolve_ranked(rules, which).map(|(v, _)| v)
}

/// [`resolve`], with the winner's rank among rules of other places that
/// compete with it at run time (patterns): 1 + 2 * action + ownerOnly.
fn resolve_ranked<'a>(
    rules: impl Iterator<Item = &'a Candidate>,
    which: usize,
) -> Option<(Verdict, u8)> {
    let best = rules
        .filter(|c| c.covers[which])
        .max_by_key(|c| (rank(c.action), c.owner_only, std::cmp::Reverse(c.policy)))?;
    let ranked = 1 + 2 * rank(best.action) + u8::from(best.owner_only);
    // ownerOnly: the owner is allowed, anyone else gets the action, and an
    // Allow limited to the owner blocks everyone else.
    let act = match (best.action, best.owner_only) {
        (LsmAction::Allow, true) => action::BLOCK,
        (a, _) => rank(a),
    };
    let v = Verdict {
        action: act,
        flags: if best.owner_only {
            verdict_flags::OWNER_ONLY
        } else {
            0
        },
        _pad: [0; 2],
        policy: best.policy,
    };
    Some((v, ranked))
}

/// A section's rules (process or file) for one pod, as gathered.
struct Section {
    places: BTreeMap<String, Place>,
    /// Each pattern's rules.
    patterns: BTreeMap<String, Vec<Candidate>>,
    has_allow: bool,
    /// `Some(policy)` if a selecting policy asks for an allowlist.
    allowlist: Option<u32>,
    denylist: bool,
}

impl Section {
    fn new() -> Self {
        Self {
            places: BTreeMap::new(),
            patterns: BTreeMap::new(),
            has_allow: false,
            allowlist: None,
            denylist: false,
        }
    }

    fn add(&mut self, path: &str, dir: Option<bool>, c: Candidate) {
        self.has_allow |= c.action == LsmAction::Allow;
        let place = self.places.entry(path.to_owned()).or_default();
        match dir {
            None => place.file.push(c),
            Some(true) => place.recursive.push(c),
            Some(false) => place.children.push(c),
        }
    }

    fn add_pattern(&mut self, pattern: &str, c: Candidate) {
        self.patterns.entry(pattern.to_owned()).or_default().push(c);
    }

    /// The patterns the kernel's automaton has room for, in order, and
    /// those left out (with their policies and why).
    fn fitting_patterns(&self) -> (Vec<&String>, Vec<(Vec<u32>, String)>) {
        let (mut fit, mut left_out) = (Vec::new(), Vec::new());
        let mut used = 0;
        for (pattern, rules) in &self.patterns {
            match refusal(pattern, used, fit.len()) {
                Some(why) => left_out.push((rules.iter().map(|c| c.policy).collect(), why)),
                None => {
                    used += states(pattern);
                    fit.push(pattern);
                }
            }
        }
        (fit, left_out)
    }

    /// Whether the section has Allow rules, among the patterns only those
    /// enforced: a pattern left out must not switch a posture on.
    fn allows(&self) -> bool {
        let (fit, _) = self.fitting_patterns();
        self.has_allow
            || fit.iter().any(|p| {
                self.patterns[*p]
                    .iter()
                    .any(|c| c.action == LsmAction::Allow)
            })
    }

    fn posture(&mut self, posture: Option<Posture>, policy: u32) {
        match posture {
            Some(Posture::Allowlist) => self.allowlist = Some(self.allowlist.unwrap_or(policy)),
            Some(Posture::Denylist) => self.denylist = true,
            None => {}
        }
    }

    /// The default for what no rule lists.
    fn default(&self, annotation: DefaultPosture) -> Verdict {
        let (act, policy) = if !self.has_allow {
            (action::ALLOW, 0)
        } else if let Some(policy) = self.allowlist {
            (action::BLOCK, policy)
        } else if self.denylist {
            (action::ALLOW, 0)
        } else {
            let act = match annotation {
                DefaultPosture::Block => action::BLOCK,
                DefaultPosture::Audit => action::AUDIT,
                DefaultPosture::Allow => action::ALLOW,
            };
            (act, 0)
        };
        Verdict {
            action: act,
            flags: verdict_flags::DEFAULT,
            _pad: [0; 2],
            policy,
        }
    }

    /// What covers `path` (a file, or the inside of a directory when `dir`)
    /// from its ancestors, for operation `which`.
    fn inherited(&self, path: &str, dir: bool, which: usize, default: Verdict) -> Verdict {
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        let mut end = trimmed.len();
        let mut direct_parent = !dir;
        while let Some(slash) = trimmed[..end].rfind('/') {
            let ancestor = &trimmed[..=slash];
            if let Some(place) = self.places.get(ancestor) {
                let children = place.children.iter().filter(|_| direct_parent);
                if let Some(v) = resolve(place.recursive.iter().chain(children), which) {
                    return v;
                }
            }
            direct_parent = false;
            end = slash;
        }
        default
    }

    /// The set, and the patterns left out (with their policies and why).
    fn build(&self, annotation: DefaultPosture) -> (RuleSet, Vec<(Vec<u32>, String)>) {
        let default = self.default(annotation);
        let (fit, left_out) = self.fitting_patterns();
        let mut entries = vec![trie_entry(
            Vec::new(),
            entry_kind::ROOT,
            [default; 2],
            [default; 2],
        )];
        for (path, place) in &self.places {
            let slot = |rules: &mut dyn Iterator<Item = &Candidate>, which, dir| {
                let rules: Vec<&Candidate> = rules.collect();
                resolve(rules.into_iter(), which)
                    .unwrap_or_else(|| self.inherited(path, dir, which, default))
            };
            // A pattern that matches a file with rules of its own is one more
            // rule at that place (the kernel does not run patterns there).
            let matching: Vec<&Candidate> = fit
                .iter()
                .filter(|p| glob::matches(p, path))
                .flat_map(|p| &self.patterns[*p])
                .collect();
            if !place.file.is_empty() {
                let mut bytes = path.as_bytes().to_vec();
                bytes.push(0);
                let direct = [op::READ, op::WRITE].map(|w| {
                    slot(
                        &mut place.file.iter().chain(matching.iter().copied()),
                        w,
                        false,
                    )
                });
                entries.push(trie_entry(bytes, entry_kind::FILE, direct, direct));
            }
            if !place.recursive.is_empty() || !place.children.is_empty() {
                let direct = [op::READ, op::WRITE].map(|w| {
                    slot(
                        &mut place.recursive.iter().chain(place.children.iter()),
                        w,
                        true,
                    )
                });
                let deeper =
                    [op::READ, op::WRITE].map(|w| slot(&mut place.recursive.iter(), w, true));
                let kind = if place.children.is_empty() {
                    entry_kind::DIR_RECURSIVE
                } else {
                    entry_kind::DIR
                };
                let deeper = if kind == entry_kind::DIR {
                    deeper
                } else {
                    direct
                };
                entries.push(trie_entry(path.as_bytes().to_vec(), kind, direct, deeper));
            }
        }
        entries.sort();
        let mut patterns = Vec::new();
        for pattern in fit {
            let rules = &self.patterns[pattern];
            let ranked = [op::READ, op::WRITE].map(|w| resolve_ranked(rules.iter(), w));
            patterns.push(PatternRule {
                pattern: pattern.clone(),
                rank: ranked.map(|r| r.map_or(0, |(_, k)| k)),
                verdict: ranked.map(|r| r.map(|(v, _)| v).unwrap_or_default()),
            });
        }
        let set = RuleSet {
            entries,
            sources: Vec::new(),
            patterns,
        };
        (set, left_out)
    }
}

/// A trie entry of a set: its prefix length (the set id's 32 bits and
/// the path's bytes), the path, and the rule.
pub(super) fn trie_entry(
    bytes: Vec<u8>,
    kind: u8,
    direct: [Verdict; 2],
    deeper: [Verdict; 2],
) -> (u32, Vec<u8>, PathRuleOrd) {
    let rule = PathRule {
        len: bytes.len() as u16,
        kind,
        _pad: 0,
        direct,
        deeper,
    };
    (32 + 8 * bytes.len() as u32, bytes, PathRuleOrd(rule))
}

const NO_NAMESPACE: &Namespace = &Namespace {
    name: String::new(),
    labels: BTreeMap::new(),
    annotations: BTreeMap::new(),
};

/// The policies with process or file rules.
fn lsm_policies(snapshot: &Snapshot) -> Vec<&Policy> {
    snapshot
        .policies
        .iter()
        .map(|p| &**p)
        .filter(|p| p.process.is_some() || p.file.is_some())
        .collect()
}

/// Those of `policies` that select `pod`.
fn selecting<'a>(
    snapshot: &'a Snapshot,
    policies: &[&'a Policy],
    pod: &Pod,
) -> (&'a Namespace, Vec<&'a Policy>) {
    let ns = snapshot
        .namespaces
        .get(&pod.namespace)
        .unwrap_or(NO_NAMESPACE);
    if policies.is_empty() {
        return (ns, Vec::new());
    }
    let ns_labels = ns.effective_labels();
    let selecting = policies
        .iter()
        .copied()
        .filter(|p| p.selects(&pod.namespace, &ns_labels, &pod.labels))
        .collect();
    (ns, selecting)
}

/// One pod's rule sets whether or not its cgroup is known (for `palisade
/// explain`), with the policies that select it by id, and what of them
/// is not enforced.
pub fn pod_rules_of(
    snapshot: &Snapshot,
    pod: &Pod,
) -> (
    PodRules,
    BTreeMap<u32, String>,
    BTreeMap<String, BTreeSet<String>>,
) {
    let (ns, selecting) = selecting(snapshot, &lsm_policies(snapshot), pod);
    let mut not_enforced = BTreeMap::new();
    let rules = pod_rules(ns, &selecting, &mut not_enforced);
    let ids = selecting
        .iter()
        .map(|p| (stable_id(&p.key()), p.key()))
        .collect();
    (rules, ids, not_enforced)
}

/// The rule sets of the local pods (those whose cgroup is known) in
/// `snapshot`, and what of the policies this node does not enforce.
pub fn compile_lsm(snapshot: &Snapshot) -> LsmDesired {
    let mut out = LsmDesired::default();
    let policies = lsm_policies(snapshot);
    if policies.is_empty() {
        return out;
    }
    for pod in &snapshot.pods {
        let (ns, selecting) = selecting(snapshot, &policies, pod);
        if selecting.is_empty() {
            continue;
        }
        for p in &selecting {
            let id = stable_id(&p.key());
            out.policies.insert(p.key(), id);
            if p.lsm_meta != LsmMeta::default() {
                out.meta.insert(id, p.lsm_meta.clone());
            }
        }
        let Some(cgroup) = &pod.cgroup else {
            out.selected_without_cgroup
                .insert(pod.key(), selecting.iter().map(|p| p.key()).collect());
            continue;
        };
        let rules = pod_rules(ns, &selecting, &mut out.not_enforced);
        out.pods.insert(
            pod.key(),
            PodRules {
                cgroup: cgroup.clone(),
                ..rules
            },
        );
    }
    out
}

/// One section's rules for one pod: the rules for every process, and
/// per `fromSource` executable the rules for processes running it.
struct Sourced {
    any: bool,
    general: Section,
    by_source: BTreeMap<String, Section>,
    /// Every policy with a rule that protects by each pattern, whatever
    /// rule wins there: the policies a guard left out is reported for.
    pattern_policies: BTreeMap<String, BTreeSet<u32>>,
}

impl Sourced {
    fn new() -> Self {
        Self {
            any: false,
            general: Section::new(),
            by_source: BTreeMap::new(),
            pattern_policies: BTreeMap::new(),
        }
    }

    fn add(
        &mut self,
        sources: &[String],
        (paths, dirs, patterns): (&[String], &[DirMatch], &[String]),
        c: Candidate,
    ) {
        if c.action != LsmAction::Allow || c.owner_only {
            for p in patterns {
                self.pattern_policies
                    .entry(p.clone())
                    .or_default()
                    .insert(c.policy);
            }
        }
        let targets: Vec<&mut Section> = if sources.is_empty() {
            vec![&mut self.general]
        } else {
            // Creating a source's section here keeps it; its general rules
            // are added when the set is built.
            for s in sources {
                self.by_source.entry(s.clone()).or_insert_with(Section::new);
            }
            self.by_source
                .iter_mut()
                .filter(|(s, _)| sources.contains(s))
                .map(|(_, section)| section)
                .collect()
        };
        for section in targets {
            for path in paths.iter().filter(|p| p.len() <= MAX_RULE_PATH) {
                section.add(path, None, c);
            }
            for d in dirs.iter().filter(|d| d.path.len() <= MAX_RULE_PATH) {
                section.add(&d.path, Some(d.recursive), c);
            }
            for p in patterns {
                section.add_pattern(p, c);
            }
        }
    }

    fn posture(&mut self, posture: Option<Posture>, policy: u32) {
        self.general.posture(posture, policy);
    }

    /// The set for every process, with the sets of the `fromSource`
    /// executables: each holds the general rules and its own, and whether
    /// the section has Allow rules is decided over all of them.
    fn build(
        mut self,
        annotation: DefaultPosture,
        left_out: &mut Vec<(Vec<u32>, String)>,
    ) -> Option<RuleSet> {
        if !self.any {
            return None;
        }
        let has_allow = self.general.allows() || self.by_source.values().any(Section::allows);
        let mut sources = Vec::new();
        for (exe, mut own) in std::mem::take(&mut self.by_source) {
            for (path, place) in &self.general.places {
                let mine = own.places.entry(path.clone()).or_default();
                mine.file.extend(place.file.iter().copied());
                mine.recursive.extend(place.recursive.iter().copied());
                mine.children.extend(place.children.iter().copied());
            }
            for (pattern, rules) in &self.general.patterns {
                let mine = own.patterns.entry(pattern.clone()).or_default();
                mine.extend(rules.iter().copied());
            }
            own.has_allow = has_allow;
            own.allowlist = self.general.allowlist;
            own.denylist = self.general.denylist;
            let (set, out) = own.build(annotation);
            left_out.extend(out);
            sources.push((exe.into_bytes(), set));
        }
        self.general.has_allow = has_allow;
        let (mut set, out) = self.general.build(annotation);
        left_out.extend(out);
        set.sources = sources;
        Some(set)
    }
}

fn pod_rules(
    ns: &Namespace,
    selecting: &[&Policy],
    not_enforced: &mut BTreeMap<String, BTreeSet<String>>,
) -> PodRules {
    let (mut process, mut file) = (Sourced::new(), Sourced::new());
    let mut gap = |policy: &Policy, why: &str| {
        not_enforced
            .entry(policy.key())
            .or_default()
            .insert(why.to_owned());
    };
    for p in selecting {
        let id = stable_id(&p.key());
        if let Some(s) = &p.process {
            process.any = true;
            process.posture(s.posture, id);
            for r in &s.rules {
                let c = Candidate {
                    action: r.action,
                    covers: [true, true],
                    owner_only: r.owner_only,
                    policy: id,
                };
                process.add(&r.from_source, (&r.paths, &r.dirs, &r.patterns), c);
            }
        }
        if let Some(s) = &p.file {
            file.any = true;
            file.posture(s.posture, id);
            for r in &s.rules {
                let covers = match (r.read_only, r.action) {
                    (false, _) => [true, true],
                    (true, LsmAction::Allow) => [true, false],
                    (true, _) => [false, true],
                };
                let c = Candidate {
                    action: r.action,
                    covers,
                    owner_only: r.owner_only,
                    policy: id,
                };
                file.add(&r.from_source, (&r.paths, &r.dirs, &r.patterns), c);
            }
        }
    }
    // A bad annotation was refused by the source; here it reads as absent.
    let (file_posture, process_posture) =
        namespace_postures(ns).unwrap_or((DefaultPosture::Audit, DefaultPosture::Audit));
    let mut left_out = Vec::new();
    let rules = PodRules {
        cgroup: String::new(),
        process: process.build(process_posture, &mut left_out),
        // Only the file section: the path hooks judge directories' names.
        file: {
            let policies = std::mem::take(&mut file.pattern_policies);
            file.build(file_posture, &mut left_out).map(|mut set| {
                left_out.extend(guard_file_sets(&mut set, &policies));
                set
            })
        },
    };
    for (ids, why) in left_out {
        for p in selecting
            .iter()
            .filter(|p| ids.contains(&stable_id(&p.key())))
        {
            gap(p, &why);
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{compile::lsm_decide::DecidedBy, model::parse::parse_documents};

    fn snapshot(policy: &str, annotations: &[(&str, &str)]) -> Snapshot {
        let mut s = crate::model::standard::snapshot();
        for p in &mut s.pods {
            let p = Arc::make_mut(p);
            p.cgroup = Some(format!("/sys/fs/cgroup/lab/{}", p.key()));
        }
        if let Some(ns) = s.namespaces.get_mut("x") {
            ns.annotations = annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        }
        for d in parse_documents(policy, "test.yaml", "x") {
            s.policies.push(d.unwrap().policy().into());
        }
        s
    }

    /// x/a's rules under one Block rule of `patterns` (each quoted).
    fn compile_block_patterns(patterns: impl Iterator<Item = String>) -> LsmDesired {
        let many: Vec<String> = patterns.collect();
        let s = snapshot(
            &format!(
                "{PNP}  file:\n    rules:\n    - {{action: Block, patterns: [{}]}}\n",
                many.join(", ")
            ),
            &[],
        );
        compile_lsm(&s)
    }

    /// The verdict the kernel reaches for `path` in `set` (its model).
    fn verdict(set: &RuleSet, path: &str, which: usize) -> u8 {
        set.decide(path, which, None).verdict.action
    }

    const PNP: &str = "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
";

    #[test]
    fn the_most_specific_rule_wins_and_prefixes_are_whole_components() {
        let s = snapshot(
            &format!(
                "{PNP}  file:
    posture: Denylist
    rules:
    - {{action: Block, dirs: [{{path: /etc/ssl/, recursive: true}}]}}
    - {{action: Allow, paths: [/etc/ssl/certs/ok.pem]}}
    - {{action: Block, paths: [/etc/shadow]}}
    - {{action: Block, readOnly: true, dirs: [{{path: /srv/logs/}}]}}
"
            ),
            &[],
        );
        let d = compile_lsm(&s);
        let set = d.pods["x/a"].file.as_ref().unwrap();
        assert_eq!(
            verdict(set, "/etc/ssl/private/key", op::READ),
            action::BLOCK
        );
        assert_eq!(
            verdict(set, "/etc/ssl/certs/ok.pem", op::READ),
            action::ALLOW
        );
        assert_eq!(verdict(set, "/etc/sslx", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/etc/shadow", op::READ), action::BLOCK);
        assert_eq!(verdict(set, "/etc/shadowx", op::READ), action::ALLOW);
        // readOnly: writes only; a non-recursive directory: children only.
        assert_eq!(verdict(set, "/srv/logs/a", op::WRITE), action::BLOCK);
        assert_eq!(verdict(set, "/srv/logs/a", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/srv/logs/a/b", op::WRITE), action::ALLOW);
        assert!(!d.pods.contains_key("x/b"), "x/b is not selected");
        assert!(
            !d.not_enforced.contains_key("palisade:x/p"),
            "{:?}",
            d.not_enforced
        );
    }

    #[test]
    fn directories_holding_protected_paths_guard_their_names() {
        let s = snapshot(
            &format!(
                "{PNP}  file:
    rules:
    - {{action: Block, readOnly: true, dirs: [{{path: /etc/ssl/, recursive: true}}]}}
    - {{action: Block, dirs: [{{path: /srv/secret/}}]}}
    - {{action: Block, readOnly: true, dirs: [{{path: /data/}}]}}
    - {{action: Block, paths: [/opt/app/key]}}
    - {{action: Audit, patterns: [/var/log/app/*.log]}}
    - {{action: Block, ownerOnly: true, dirs: [{{path: /home/u/}}]}}
"
            ),
            &[],
        );
        let d = compile_lsm(&s);
        let set = d.pods["x/a"].file.as_ref().unwrap();
        let by = |path: &str, which| set.decide(path, which, None);
        // Renaming, removing or changing /etc/ssl, or /etc, would carry
        // what the rule protects out from under it; nothing protects /etc
        // itself, and reading those names is as before.
        for name in ["/etc/ssl", "/etc/ssl/", "/etc"] {
            let d = by(name, op::WRITE);
            assert_eq!(d.verdict.action, action::BLOCK, "{name}");
            assert_eq!(d.by, DecidedBy::DirName(name.trim_end_matches('/').into()));
        }
        assert_eq!(verdict(set, "/etc/ssl", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/etc/sslx", op::WRITE), action::ALLOW);
        assert_eq!(verdict(set, "/etc/x", op::WRITE), action::ALLOW);
        assert_eq!(verdict(set, "/", op::WRITE), action::ALLOW);
        // A directory opened is read by its own key: listing a blocked
        // directory is reading what is in it.
        assert_eq!(verdict(set, "/srv/secret/", op::READ), action::BLOCK);
        assert_eq!(verdict(set, "/srv/secret", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/srv/secret", op::WRITE), action::BLOCK);
        assert_eq!(verdict(set, "/srv", op::WRITE), action::BLOCK);
        // A protected file's directories, and a pattern's.
        assert_eq!(verdict(set, "/opt/app", op::WRITE), action::BLOCK);
        assert_eq!(verdict(set, "/opt", op::WRITE), action::BLOCK);
        assert_eq!(verdict(set, "/opt/app/other", op::WRITE), action::ALLOW);
        assert_eq!(verdict(set, "/var/log/app", op::WRITE), action::AUDIT);
        assert_eq!(verdict(set, "/var/log/app/", op::READ), action::ALLOW);
        // A name already as strictly judged by its parent's rules needs no
        // guard: /data/sub is a name in the read-only /data/.
        assert_eq!(
            by("/data/sub", op::WRITE).by,
            DecidedBy::Dir {
                path: "/data/".into(),
                recursive: false,
                deeper: false
            }
        );
        assert_eq!(verdict(set, "/data", op::WRITE), action::BLOCK);
        // A guard spares the owner where the rule does, on the rule's own
        // directory only: renaming /home is no write of u's own.
        let home = by("/home/u", op::WRITE).verdict;
        assert_eq!(home.action, action::BLOCK);
        assert_eq!(
            home.flags & verdict_flags::OWNER_ONLY,
            verdict_flags::OWNER_ONLY
        );
        let above = by("/home", op::WRITE).verdict;
        assert_eq!(above.action, action::BLOCK);
        assert_eq!(above.flags & verdict_flags::OWNER_ONLY, 0);
        // Under an allowlist an allowed directory is listed by its own
        // rules, and the posture, which blocks every other name, guards
        // its name already.
        let s = snapshot(
            &format!(
                "{PNP}  file:
    posture: Allowlist
    rules:
    - {{action: Allow, dirs: [{{path: /app/, recursive: true}}]}}
    - {{action: Block, dirs: [{{path: /app/secret/}}]}}
"
            ),
            &[],
        );
        let d = compile_lsm(&s);
        let set = d.pods["x/a"].file.as_ref().unwrap();
        assert_eq!(verdict(set, "/app/", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/app", op::READ), action::BLOCK);
        assert_eq!(verdict(set, "/app/data", op::WRITE), action::ALLOW);
        assert_eq!(verdict(set, "/app/secret", op::WRITE), action::BLOCK);
        assert_eq!(verdict(set, "/app/secret/", op::READ), action::BLOCK);
        // The process section judges executables, never directories' names.
        let s = snapshot(
            &format!(
                "{PNP}  process:
    rules:
    - {{action: Block, paths: [/usr/bin/curl]}}
"
            ),
            &[],
        );
        let set = compile_lsm(&s);
        let set = set.pods["x/a"].process.as_ref().unwrap();
        assert!(
            set.entries
                .iter()
                .all(|(_, _, r)| r.0.kind != entry_kind::DIR_NAME)
        );
    }

    #[test]
    fn a_set_can_block_by_a_rule_an_owner_only_allow_a_default_or_a_source_set() {
        let can_block = |rules: &str, annotations: &[(&str, &str)]| {
            let desired = compile_lsm(&snapshot(
                &format!("{PNP}  file:\n    rules:\n{rules}"),
                annotations,
            ));
            desired.pods["x/a"].file.as_ref().unwrap().can_block()
        };
        // Audit and Allow alone never block: an unjudged run is audited.
        assert!(!can_block(
            "    - {action: Audit, paths: [/etc/shadow]}\n",
            &[]
        ));
        assert!(!can_block(
            "    - {action: Allow, dirs: [{path: /app/, recursive: true}]}\n",
            &[("kubearmor-file-posture", "audit")]
        ));
        assert!(can_block(
            "    - {action: Block, paths: [/etc/shadow]}\n",
            &[]
        ));
        assert!(can_block(
            "    - {action: Block, patterns: ['/home/*/.ssh/*']}\n",
            &[]
        ));
        // An Allow for the owner only blocks everyone else.
        assert!(can_block(
            "    - {action: Allow, ownerOnly: true, paths: [/etc/app.conf]}\n",
            &[("kubearmor-file-posture", "allow")]
        ));
        // The default of an allowlist blocks the unlisted.
        assert!(can_block(
            "    - {action: Allow, dirs: [{path: /app/, recursive: true}]}\n",
            &[("kubearmor-file-posture", "block")]
        ));
        // A fromSource set's Block counts for the pod's set (a file at the
        // root, whose directory guards no name in the general set).
        assert!(can_block(
            "    - {action: Block, paths: [/shadow], fromSource: [/bin/cat]}\n",
            &[]
        ));
    }

    #[test]
    fn postures_apply_only_with_allow_rules() {
        let allow = format!(
            "{PNP}  process:
    rules:
    - {{action: Allow, dirs: [{{path: /usr/bin/, recursive: true}}]}}
"
        );
        let audit = compile_lsm(&snapshot(&allow, &[]));
        let set = audit.pods["x/a"].process.as_ref().unwrap();
        assert_eq!(verdict(set, "/usr/bin/ls", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/bin/sh", op::READ), action::AUDIT);
        let block = compile_lsm(&snapshot(&allow, &[("kubearmor-file-posture", "block")]));
        let set = block.pods["x/a"].process.as_ref().unwrap();
        assert_eq!(verdict(set, "/bin/sh", op::READ), action::BLOCK);
        let apart = compile_lsm(&snapshot(
            &allow,
            &[
                ("kubearmor-file-posture", "block"),
                ("kubearmor-process-posture", "allow"),
            ],
        ));
        let set = apart.pods["x/a"].process.as_ref().unwrap();
        assert_eq!(verdict(set, "/bin/sh", op::READ), action::ALLOW);
        let listed = allow.replace("    rules:", "    posture: Allowlist\n    rules:");
        let set = compile_lsm(&snapshot(&listed, &[]));
        let set = set.pods["x/a"].process.as_ref().unwrap();
        assert_eq!(verdict(set, "/bin/sh", op::READ), action::BLOCK);
        // Block rules alone leave the rest allowed, whatever the annotation.
        let deny = format!(
            "{PNP}  process:
    rules:
    - {{action: Block, paths: [/bin/sh]}}
"
        );
        let set = compile_lsm(&snapshot(&deny, &[("kubearmor-file-posture", "block")]));
        let set = set.pods["x/a"].process.as_ref().unwrap();
        assert_eq!(verdict(set, "/bin/ls", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/bin/sh", op::READ), action::BLOCK);
    }

    #[test]
    fn equal_places_block_beats_audit_beats_allow_and_sets_are_keyed() {
        let s = snapshot(
            &format!(
                "{PNP}  file:
    rules:
    - {{action: Allow, paths: [/a/b]}}
    - {{action: Audit, paths: [/a/b]}}
    - {{action: Audit, paths: [/a/c]}}
    - {{action: Allow, paths: [/a/c]}}
    - {{action: Block, paths: [/a/c]}}
"
            ),
            &[],
        );
        let d = compile_lsm(&s);
        let set = d.pods["x/a"].file.as_ref().unwrap();
        assert_eq!(verdict(set, "/a/b", op::READ), action::AUDIT);
        assert_eq!(verdict(set, "/a/c", op::WRITE), action::BLOCK);
        let keys: Vec<_> = set.keys(7).collect();
        assert_eq!(keys.len(), set.entries.len());
        assert_eq!(keys[0].0, 32, "the root entry comes first");
        assert!(keys.iter().all(|(_, data, _)| data.set == 7));
    }

    #[test]
    fn from_source_rules_get_a_set_of_their_own_with_the_general_rules() {
        let s = snapshot(
            &format!(
                "{PNP}  file:
    posture: Denylist
    rules:
    - {{action: Block, paths: [/a/general]}}
    - {{action: Block, paths: [/c/secret], fromSource: [/bin/cat]}}
    - {{action: Block, patterns: ['/d/*/key'], fromSource: [/bin/cat]}}
"
            ),
            &[],
        );
        let d = compile_lsm(&s);
        let set = d.pods["x/a"].file.as_ref().unwrap();
        assert_eq!(verdict(set, "/c/secret", op::READ), action::ALLOW);
        // Any process renaming /c, or a /d/* directory, would carry what
        // cat's rules protect out from under them: the guards are every
        // process's.
        let (cat, all) = (&set.sources[0].1, set);
        for set in [cat, all] {
            assert_eq!(verdict(set, "/c", op::WRITE), action::BLOCK);
            assert_eq!(verdict(set, "/d", op::WRITE), action::BLOCK);
            assert_eq!(
                set.decide("/d/x/", op::WRITE, None).by,
                DecidedBy::Guard("/d/*".into())
            );
        }
        assert_eq!(verdict(set, "/d/x/key", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/a/general", op::READ), action::BLOCK);
        assert_eq!(set.sources.len(), 1);
        let (exe, cat) = &set.sources[0];
        assert_eq!(exe, b"/bin/cat");
        assert_eq!(verdict(cat, "/c/secret", op::READ), action::BLOCK);
        assert_eq!(verdict(cat, "/d/x/key", op::READ), action::BLOCK);
        assert_eq!(verdict(cat, "/a/general", op::READ), action::BLOCK);
        assert_eq!(verdict(cat, "/a/other", op::READ), action::ALLOW);
        assert_eq!(set.source_keys(9).count(), 1);
        assert!(
            !d.not_enforced.contains_key("palisade:x/p"),
            "{:?}",
            d.not_enforced
        );
    }

    #[test]
    fn patterns_decide_over_directories_and_join_a_files_own_rules() {
        let s = snapshot(
            &format!(
                "{PNP}  file:
    posture: Denylist
    rules:
    - {{action: Block, dirs: [{{path: /v/, recursive: true}}]}}
    - {{action: Allow, patterns: ['/v/pub*']}}
    - {{action: Allow, paths: [/v/private]}}
    - {{action: Block, patterns: ['/v/priv*', '/k/**/*.key']}}
    - {{action: Audit, readOnly: true, patterns: ['/k/*.key']}}
"
            ),
            &[],
        );
        let d = compile_lsm(&s);
        let set = d.pods["x/a"].file.as_ref().unwrap();
        // And the guard of the directories `/k/**/*.key` reaches.
        assert_eq!(set.patterns.len(), 5);
        assert_eq!(set.patterns[4].pattern, "/k/**");
        assert_eq!(verdict(set, "/v/public", op::READ), action::ALLOW);
        assert_eq!(verdict(set, "/v/other", op::READ), action::BLOCK);
        assert_eq!(verdict(set, "/v/private", op::READ), action::BLOCK);
        assert_eq!(verdict(set, "/k/a/b.key", op::READ), action::BLOCK);
        assert_eq!(verdict(set, "/k/b.key", op::WRITE), action::BLOCK);
        assert_eq!(verdict(set, "/k.key", op::READ), action::ALLOW);
        let by = set.decide("/v/public", op::READ, None).by;
        assert_eq!(by, DecidedBy::Pattern("/v/pub*".into()));
        assert_eq!(
            set.decide("/v/private", op::READ, None).by,
            DecidedBy::File("/v/private".into())
        );
        assert!(
            !d.not_enforced.contains_key("palisade:x/p"),
            "{:?}",
            d.not_enforced
        );
    }

    #[test]
    fn directories_a_pattern_reaches_are_guarded_against_renames() {
        let s = snapshot(
            &format!(
                "{PNP}  file:
    rules:
    - {{action: Block, patterns: ['/home/*/.ssh/id_rsa', '/**/*.key']}}
    - {{action: Audit, patterns: ['/logs/*/today/*.log']}}
    - {{action: Block, readOnly: true, dirs: [{{path: /logs/keep/, recursive: true}}]}}
"
            ),
            &[],
        );
        let d = compile_lsm(&s);
        let set = d.pods["x/a"].file.as_ref().unwrap();
        let guards: Vec<&str> = (set.patterns.iter())
            .filter(|p| p.verdict[op::WRITE].flags & verdict_flags::GUARD != 0)
            .map(|p| p.pattern.as_str())
            .collect();
        // `/**` would guard every directory and protect nothing.
        assert_eq!(
            guards,
            ["/home/*", "/home/*/.ssh", "/logs/*", "/logs/*/today"]
        );
        let by = |path: &str, which| set.decide(path, which, None);
        // A directory named by a trailing '/' and written: renamed.
        for (dir, guard) in [
            ("/home/alice/.ssh/", "/home/*/.ssh"),
            ("/home/alice/", "/home/*"),
        ] {
            let d = by(dir, op::WRITE);
            assert_eq!(d.verdict.action, action::BLOCK, "{dir}");
            assert_eq!(d.by, DecidedBy::Guard(guard.into()), "{dir}");
        }
        // Only directories, and only written: a file of that name, and a
        // directory listed, are as before.
        assert_eq!(verdict(set, "/home/notes", op::WRITE), action::ALLOW);
        assert_eq!(verdict(set, "/home/alice/.ssh/", op::READ), action::ALLOW);
        assert_eq!(
            verdict(set, "/home/alice/.ssh/id_rsa", op::READ),
            action::BLOCK
        );
        // An Audit pattern's guard audits, and never loosens a stricter
        // directory rule above the renamed directory.
        let open = by("/logs/open/today/", op::WRITE);
        assert_eq!(open.verdict.action, action::AUDIT);
        assert_eq!(open.by, DecidedBy::Guard("/logs/*/today".into()));
        let keep = by("/logs/keep/today/", op::WRITE);
        assert_eq!(keep.verdict.action, action::BLOCK);
        assert!(matches!(keep.by, DecidedBy::Dir { .. }), "{:?}", keep.by);
        assert!(
            !d.not_enforced.contains_key("palisade:x/p"),
            "{:?}",
            d.not_enforced
        );
    }

    #[test]
    fn a_guard_only_ever_raises_what_the_other_rules_decide() {
        let decide = |rules: &str, path: &str| {
            let s = snapshot(&format!("{PNP}  file:\n    rules:\n{rules}"), &[]);
            let d = compile_lsm(&s);
            d.pods["x/a"]
                .file
                .as_ref()
                .unwrap()
                .decide(path, op::WRITE, None)
        };
        // A looser rule on the directory's own name (its guard, here an
        // Audit one for a file below it) does not hide the guard.
        let d = decide(
            "    - {action: Block, patterns: ['/home/*/.ssh/id_rsa']}
    - {action: Audit, paths: [/home/alice/notes]}
",
            "/home/alice/",
        );
        assert_eq!(d.verdict.action, action::BLOCK);
        assert_eq!(d.by, DecidedBy::Guard("/home/*".into()));
        // An ownerOnly pattern on the directory does not outrank the guard
        // of a plain Block below it: the owner cannot rename it either.
        let d = decide(
            "    - {action: Block, ownerOnly: true, patterns: ['/home/*/.ssh']}
    - {action: Block, patterns: ['/home/*/.ssh/id_rsa']}
",
            "/home/alice/.ssh/",
        );
        assert_eq!(
            (d.verdict.action, d.verdict.flags),
            (action::BLOCK, verdict_flags::GUARD)
        );
        // An Audit guard never loosens an ownerOnly Allow (a Block for
        // anyone else)...
        let d = decide(
            "    - {action: Allow, ownerOnly: true, patterns: ['/srv/*']}
    - {action: Audit, patterns: ['/srv/*/logs/*.log']}
",
            "/srv/a/",
        );
        assert_eq!(d.verdict.action, action::BLOCK);
        assert_eq!(d.by, DecidedBy::Pattern("/srv/*".into()));
        // ...and raises what an Allow pattern decided over a directory rule
        // to itself, not to the directory rule's Block.
        let d = decide(
            "    - {action: Block, dirs: [{path: /srv/, recursive: true}]}
    - {action: Allow, patterns: ['/srv/*']}
    - {action: Audit, patterns: ['/srv/*/logs/*.log']}
",
            "/srv/a/",
        );
        assert_eq!(d.verdict.action, action::AUDIT);
        assert_eq!(d.by, DecidedBy::Guard("/srv/*".into()));
    }

    #[test]
    fn a_guard_left_out_is_reported_for_every_policy_asking_for_it() {
        let many: Vec<String> = (0..10).map(|i| format!("'/p{i}/*/key'")).collect();
        let policy = |name: &str| {
            format!(
                "{}  file:\n    rules:\n    - {{action: Block, patterns: [{}]}}\n",
                PNP.replace("name: p,", &format!("name: {name},")),
                many.join(", ")
            )
        };
        let s = snapshot(&format!("{}---\n{}", policy("p"), policy("q")), &[]);
        let d = compile_lsm(&s);
        // Guards that do not fit the automaton are reported; the patterns
        // themselves are all enforced.
        let set = d.pods["x/a"].file.as_ref().unwrap();
        assert_eq!(set.patterns.len(), ebpf_common::lsm::MAX_PATTERNS);
        for key in ["palisade:x/p", "palisade:x/q"] {
            let why = &d.not_enforced[key];
            assert_eq!(why.len(), 4, "{key}: {why:?}");
            assert!(
                why.iter()
                    .all(|w| w.contains("not guarded against renames")),
                "{key}: {why:?}"
            );
        }
    }

    #[test]
    fn patterns_beyond_the_automatons_room_are_reported_not_enforced() {
        let d = compile_block_patterns((0..20).map(|i| format!("'/p/{i}/*'")));
        let set = d.pods["x/a"].file.as_ref().unwrap();
        assert_eq!(set.patterns.len(), ebpf_common::lsm::MAX_PATTERNS);
        let why = &d.not_enforced["palisade:x/p"];
        assert!(why.iter().any(|w| w.contains("patterns apply")), "{why:?}");
    }

    #[test]
    fn a_pattern_left_out_counts_nowhere() {
        // Sixteen Block patterns fill the automaton; the Allow pattern
        // sorted after them is left out, so it neither switches the
        // namespace's block posture on nor joins the file's own rule.
        let blocks: Vec<String> = (0..16).map(|i| format!("'/a/{i:02}/*'")).collect();
        let s = snapshot(
            &format!(
                "{PNP}  file:\n    rules:\n    - {{action: Block, patterns: [{}]}}\n    \
                 - {{action: Allow, patterns: ['/z/*']}}\n    - {{action: Audit, paths: [/z/f]}}\n",
                blocks.join(", ")
            ),
            &[("kubearmor-file-posture", "block")],
        );
        let d = compile_lsm(&s);
        let set = d.pods["x/a"].file.as_ref().unwrap();
        assert_eq!(set.patterns.len(), 16);
        assert!(set.patterns.iter().all(|p| p.pattern != "/z/*"));
        assert_eq!(verdict(set, "/q", op::READ), action::ALLOW, "no posture");
        assert_eq!(verdict(set, "/z/f", op::READ), action::AUDIT);
        assert!(
            d.not_enforced["palisade:x/p"]
                .iter()
                .any(|w| w.contains("/z/*"))
        );
    }

    #[test]
    fn pods_without_a_known_cgroup_get_no_rules() {
        let mut s = snapshot(
            &format!("{PNP}  process:\n    rules:\n    - {{action: Block, paths: [/bin/sh]}}\n"),
            &[],
        );
        for p in &mut s.pods {
            Arc::make_mut(p).cgroup = None;
        }
        let d = compile_lsm(&s);
        assert!(d.pods.is_empty());
        assert!(d.policies.contains_key("palisade:x/p"));
    }
}
