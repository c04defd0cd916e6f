//! Directory names guarded for what lies in them. Rules key a directory
//! by what it holds (`/etc/ssl/`) and a file by its path, while the path
//! hooks judge a directory's own name (`/etc/ssl`) when it is renamed,
//! removed, made, or its mode or owner changed. Renaming `/etc/ssl`, or
//! `/etc`, would carry every file a rule protects there out from under
//! that rule (and `mkdir` would put a fresh one in its place). So each
//! directory at or above a rule that blocks or audits gets an entry for
//! its own name ([`entry_kind::DIR_NAME`]) whose write verdict is the
//! strictest of those rules, where that is stricter than what its
//! parent's rules say of the name; reads of that name stay as they were.
//!
//! A pattern reaches below its literal start through wildcards:
//! `/home/*/.ssh/id_rsa` protects a file in every `/home/*/.ssh`, and
//! renaming `/home/alice/.ssh` (or `/home/alice`) would carry one out of
//! the pattern's reach. Those directories have no names to key, so each
//! gets a guard pattern instead (`/home/*`, `/home/*/.ssh`), flagged
//! [`verdict_flags::GUARD`]: it judges only a directory renamed (made,
//! removed or changed, a directory carries nothing out), and it only ever
//! raises what the other rules (the name's entry, the ordinary patterns)
//! decide. Guard patterns take pattern slots; those that do not fit are
//! reported, never dropped silently. A directory renamed by any process
//! carries what lies in it away, so a `fromSource` rule's guards are
//! every process's.

use std::collections::{BTreeMap, BTreeSet};

use ebpf_common::lsm::{Verdict, action, entry_kind, op, verdict_flags};

use super::{
    lsm::{PatternRule, RuleSet, trie_entry},
    patterns::{refusal, states},
};

/// A verdict a rule wrote that protects something: not an allow, and not
/// a section's default (which reaches every name alike).
fn protects(v: &Verdict) -> bool {
    v.action != action::ALLOW && v.flags & verdict_flags::DEFAULT == 0
}

/// `dir` and every directory above it but the root, deepest first.
fn names_at_and_above(dir: &str) -> impl Iterator<Item = &str> {
    let mut at = Some(dir.trim_end_matches('/'));
    std::iter::from_fn(move || {
        let d = at.filter(|d| !d.is_empty())?;
        at = d.rfind('/').map(|i| &d[..i]);
        Some(d)
    })
}

/// The directory a pattern's literal start lies in (`/etc/ssl` for
/// `/etc/ssl/*.key`): whatever the pattern matches is below it.
fn pattern_dir(pattern: &str) -> &str {
    let literal = pattern.find(['*', '?']).map_or(pattern, |i| &pattern[..i]);
    literal.rfind('/').map_or("", |i| &literal[..i])
}

/// The directories a pattern reaches through its wildcards, as patterns,
/// shallowest first: `/home/*` and `/home/*/.ssh` for
/// `/home/*/.ssh/id_rsa`. A `**` within a component crosses directories,
/// so the pattern up to it is one too (`/srv/**` for `/srv/**.key` and for
/// `/srv/**`, whose matches lie in every directory below `/srv`). Such a
/// guard also judges moves that keep everything in reach (`/srv/a` to
/// `/srv/b`): a pattern cannot tell those apart. Left out: those made of
/// `**` alone from the root (`/**` for `/**/*.key`), since what lies
/// anywhere stays in the pattern's reach wherever it is moved.
fn reached_directories(pattern: &str) -> Vec<&str> {
    let literal = pattern_dir(pattern).len();
    let mut ends: Vec<usize> = (pattern.match_indices('/').map(|(i, _)| i))
        .chain(pattern.match_indices("**").map(|(i, _)| i + 2))
        .filter(|&end| end > literal)
        .collect();
    ends.sort_unstable();
    ends.dedup();
    ends.into_iter()
        .map(|end| &pattern[..end])
        .filter(|dir| !dir.split('/').all(|c| c.is_empty() || c == "**"))
        .collect()
}

/// What rules need guarded: directories' names, each with the strictest
/// verdict asked for it, and guard patterns, each with its verdict and the
/// patterns that ask for it.
#[derive(Default)]
pub(super) struct GuardNeeds {
    names: BTreeMap<String, Verdict>,
    patterns: BTreeMap<String, (Verdict, BTreeSet<String>)>,
}

impl GuardNeeds {
    /// `dir` and the directories above it. `own`: whether `dir` is the
    /// rule's own directory, whose owner an `ownerOnly` rule spares; the
    /// directories above it are others' (renaming `/home` is no write of
    /// u's own), so their guard spares no owner.
    fn names(&mut self, dir: &str, own: bool, v: Verdict) {
        for (i, name) in names_at_and_above(dir).enumerate() {
            let mut v = v;
            if i > 0 || !own {
                v.flags &= !verdict_flags::OWNER_ONLY;
            }
            let held = self.names.entry(name.to_owned()).or_insert(v);
            if v.strictness() > held.strictness() {
                *held = v;
            }
        }
    }

    /// The directories `pattern` reaches through its wildcards.
    fn reached(&mut self, pattern: &str, mut v: Verdict) {
        // Renaming a directory is no write of its owner's own.
        v.flags = verdict_flags::GUARD;
        for dir in reached_directories(pattern) {
            let (held, asking) =
                (self.patterns.entry(dir.to_owned())).or_insert((v, BTreeSet::new()));
            if v.strictness() > held.strictness() {
                *held = v;
            }
            asking.insert(pattern.to_owned());
        }
    }
}

/// The guards of a file section's sets. A directory renamed by any
/// process carries what lies in it out from under every rule, a
/// `fromSource` rule's too, so the general set and each `fromSource` set
/// get the guards that all of their rules need. Returns the guard patterns
/// that did not fit, with the policies whose patterns lack them (by
/// `pattern_policies`, each pattern's policies) and why.
pub(super) fn guard_file_sets(
    set: &mut RuleSet,
    pattern_policies: &BTreeMap<String, BTreeSet<u32>>,
) -> Vec<(Vec<u32>, String)> {
    let mut needs = GuardNeeds::default();
    set.guard_needs(&mut needs);
    for (_, own) in &set.sources {
        own.guard_needs(&mut needs);
    }
    let mut unguarded = set.add_guards(&needs);
    for (_, own) in &mut set.sources {
        unguarded.extend(own.add_guards(&needs));
    }
    (unguarded.into_iter())
        .map(|(asking, why)| {
            let policies = (asking.iter())
                .filter_map(|p| pattern_policies.get(p))
                .flatten()
                .copied()
                .collect::<BTreeSet<u32>>();
            (policies.into_iter().collect(), why)
        })
        .collect()
}

impl RuleSet {
    /// What this set's rules that block or audit need guarded.
    fn guard_needs(&self, needs: &mut GuardNeeds) {
        for (_, key, rule) in &self.entries {
            let rule = rule.0;
            let path = String::from_utf8_lossy(key.strip_suffix(&[0]).unwrap_or(key));
            let (dir, own) = match rule.kind {
                // The root, and guards already added.
                entry_kind::ROOT | entry_kind::DIR_NAME => continue,
                // A directory's key ends with its '/': the directory itself.
                entry_kind::DIR | entry_kind::DIR_RECURSIVE => (&path[..], true),
                _ => (path.rfind('/').map_or("", |i| &path[..i]), false),
            };
            for v in rule.direct.iter().filter(|v| protects(v)) {
                needs.names(dir, own, *v);
            }
        }
        for p in &self.patterns {
            let covered = p.verdict.iter().zip(p.rank).filter(|(_, r)| *r > 0);
            for (v, _) in covered.filter(|(v, _)| protects(v)) {
                needs.names(pattern_dir(&p.pattern), false, *v);
                needs.reached(&p.pattern, *v);
            }
        }
    }

    /// Adds (or, where a file rule holds the same name, folds into its
    /// entry) the guard of every directory name in `needs` that this set
    /// does not already judge as strictly, and the guard patterns; returns
    /// the guard patterns that did not fit, with the patterns asking for them.
    fn add_guards(&mut self, needs: &GuardNeeds) -> Vec<(BTreeSet<String>, String)> {
        let mut added = Vec::new();
        // Built once, before guards are added or folded in: a fold changes
        // only the entry keyed by its own name, which no other name's key
        // starts with.
        let lookup = self.lookup();
        for (name, &v) in &needs.names {
            let read = self.decide_key(name, op::READ, &lookup, false).verdict;
            let write = self.decide_key(name, op::WRITE, &lookup, false).verdict;
            if v.strictness() <= write.strictness() {
                continue;
            }
            let mut key = name.clone().into_bytes();
            key.push(0);
            match lookup.position(&key).and_then(|i| self.entries.get_mut(i)) {
                Some((_, _, file)) => {
                    file.0.direct[op::WRITE] = v;
                    file.0.deeper = file.0.direct;
                }
                None => added.push(trie_entry(key, entry_kind::DIR_NAME, [read, v], [read, v])),
            }
        }
        self.entries.extend(added);
        self.entries.sort();
        self.add_guard_patterns(needs)
    }

    /// The guard patterns (see the module's comment) that fit.
    fn add_guard_patterns(&mut self, needs: &GuardNeeds) -> Vec<(BTreeSet<String>, String)> {
        let mut used: usize = self.patterns.iter().map(|p| states(&p.pattern)).sum();
        let mut left_out = Vec::new();
        // Even where an ordinary pattern of the same text is as strict: a
        // name's own entry keeps ordinary patterns out, never a guard.
        for (dir, (v, asking)) in &needs.patterns {
            if let Some(why) = refusal(dir, used, self.patterns.len()) {
                left_out.push((
                    asking.clone(),
                    format!(
                        "directories matching {dir:?} are not guarded against renames, which \
                         can carry what a pattern reaches below them out of its reach: {why}"
                    ),
                ));
                continue;
            }
            used += states(dir);
            self.patterns.push(PatternRule {
                pattern: dir.clone(),
                // The scale of every slot's: 1 + 2 * action (+ ownerOnly).
                rank: [0, 1 + 2 * v.action],
                verdict: [Verdict::default(), *v],
            });
        }
        left_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_run_from_the_directory_up_to_below_the_root() {
        let got: Vec<&str> = names_at_and_above("/etc/ssl/").collect();
        assert_eq!(got, ["/etc/ssl", "/etc"]);
        assert_eq!(names_at_and_above("/").count(), 0);
        assert_eq!(names_at_and_above("").count(), 0);
    }

    #[test]
    fn a_patterns_directory_is_where_its_literal_start_ends() {
        assert_eq!(pattern_dir("/etc/ssl/*.key"), "/etc/ssl");
        assert_eq!(pattern_dir("/etc/ss?/key"), "/etc");
        assert_eq!(pattern_dir("/**/*.key"), "");
        assert_eq!(pattern_dir("/srv/a/b"), "/srv/a");
    }

    #[test]
    fn a_pattern_reaches_the_directories_below_its_literal_start() {
        let reached = reached_directories;
        assert_eq!(reached("/home/*/.ssh/id_rsa"), ["/home/*", "/home/*/.ssh"]);
        assert_eq!(
            reached("/srv/**/secret/*.pem"),
            ["/srv/**", "/srv/**/secret"]
        );
        assert_eq!(reached("/etc/ss?/key"), ["/etc/ss?"]);
        assert_eq!(reached("/etc/ssl/*.key"), Vec::<&str>::new());
        assert_eq!(reached("/**/*.key"), Vec::<&str>::new());
        assert_eq!(reached("/**/.ssh/*"), ["/**/.ssh"]);
        assert_eq!(reached("/*/secret"), ["/*"]);
        // A `**` within a component crosses directories too.
        assert_eq!(reached("/srv/**.key"), ["/srv/**"]);
        assert_eq!(reached("/srv/a**/b.key"), ["/srv/a**"]);
        assert_eq!(reached("/**.key"), Vec::<&str>::new());
        assert_eq!(reached("/data/**"), ["/data/**"]);
        assert_eq!(reached("/data/*"), Vec::<&str>::new());
    }
}
