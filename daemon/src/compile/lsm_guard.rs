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
//! removed or changed, a directory carries nothing out), and only where it
//! is stricter than what the trie says of the name. Guard patterns take
//! pattern slots; those that do not fit are reported, never dropped
//! silently.

use std::collections::BTreeMap;

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
/// `/home/*/.ssh/id_rsa`. Left out: those made of `**` alone from the
/// root (`/**` for `/**/*.key`), since what lies anywhere stays in the
/// pattern's reach wherever it is moved.
fn reached_directories(pattern: &str) -> impl Iterator<Item = &str> {
    let literal = pattern_dir(pattern).len();
    pattern
        .match_indices('/')
        .map(|(i, _)| &pattern[..i])
        .filter(move |dir| dir.len() > literal)
        .filter(|dir| !dir.split('/').all(|c| c.is_empty() || c == "**"))
}

impl RuleSet {
    /// Adds (or, where a file rule holds the same name, folds into its
    /// entry) the guard of every directory name that needs one, and the
    /// guard patterns of the directories patterns reach. Returns the guard
    /// patterns that did not fit, with the policies whose patterns lack
    /// them and why.
    pub(super) fn guard_directory_names(&mut self) -> Vec<(Vec<u32>, String)> {
        let mut needs: BTreeMap<String, Verdict> = BTreeMap::new();
        // `own`: whether `dir` is the rule's own directory, whose owner an
        // `ownerOnly` rule spares; the directories above it are others'
        // (renaming `/home` is no write of u's own), so their guard spares
        // no owner.
        let mut need = |dir: &str, own: bool, v: Verdict| {
            for (i, name) in names_at_and_above(dir).enumerate() {
                let mut v = v;
                if i > 0 || !own {
                    v.flags &= !verdict_flags::OWNER_ONLY;
                }
                let held = needs.entry(name.to_owned()).or_insert(v);
                if v.strictness() > held.strictness() {
                    *held = v;
                }
            }
        };
        for (_, key, rule) in &self.entries {
            let rule = rule.0;
            let path = String::from_utf8_lossy(key.strip_suffix(&[0]).unwrap_or(key));
            let (dir, own) = match rule.kind {
                entry_kind::ROOT => continue,
                // A directory's key ends with its '/': the directory itself.
                entry_kind::DIR | entry_kind::DIR_RECURSIVE => (&path[..], true),
                _ => (path.rfind('/').map_or("", |i| &path[..i]), false),
            };
            for v in rule.direct.iter().filter(|v| protects(v)) {
                need(dir, own, *v);
            }
        }
        for p in &self.patterns {
            for v in p.verdict.iter().filter(|v| protects(v)) {
                need(pattern_dir(&p.pattern), false, *v);
            }
        }
        let mut added = Vec::new();
        // Built once, before guards are added or folded in: a fold changes
        // only the entry keyed by its own name, which no other name's key
        // starts with.
        let lookup = self.lookup();
        for (name, v) in needs {
            let read = self.decide_key(&name, op::READ, &lookup, false).verdict;
            let write = self.decide_key(&name, op::WRITE, &lookup, false).verdict;
            if v.strictness() <= write.strictness() {
                continue;
            }
            let mut key = name.into_bytes();
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
        self.guard_reached_directories()
    }

    /// The guard patterns (see the module's comment).
    fn guard_reached_directories(&mut self) -> Vec<(Vec<u32>, String)> {
        let mut needs: BTreeMap<String, (Verdict, Vec<u32>)> = BTreeMap::new();
        for p in &self.patterns {
            for v in p
                .verdict
                .iter()
                .zip(p.rank)
                .filter(|(v, r)| *r > 0 && protects(v))
            {
                let mut v = *v.0;
                // Renaming a directory is no write of its owner's own.
                v.flags = verdict_flags::GUARD;
                for dir in reached_directories(&p.pattern) {
                    let (held, policies) = needs.entry(dir.to_owned()).or_insert((v, Vec::new()));
                    if v.strictness() > held.strictness() {
                        *held = v;
                    }
                    policies.push(v.policy);
                }
            }
        }
        let mut used: usize = self.patterns.iter().map(|p| states(&p.pattern)).sum();
        let mut left_out = Vec::new();
        for (dir, (v, mut policies)) in needs {
            let covered = self.patterns.iter().any(|p| {
                p.pattern == dir
                    && p.rank[op::WRITE] > 0
                    && p.verdict[op::WRITE].strictness() >= v.strictness()
            });
            if covered {
                continue;
            }
            if let Some(why) = refusal(&dir, used, self.patterns.len()) {
                policies.sort_unstable();
                policies.dedup();
                left_out.push((
                    policies,
                    format!(
                        "directories matching {dir:?} are not guarded against renames, which \
                         can carry what a pattern reaches below them out of its reach: {why}"
                    ),
                ));
                continue;
            }
            used += states(&dir);
            self.patterns.push(PatternRule {
                pattern: dir,
                // The scale of every slot's: 1 + 2 * action (+ ownerOnly).
                rank: [0, 1 + 2 * v.action],
                verdict: [Verdict::default(), v],
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
        let reached = |p| reached_directories(p).collect::<Vec<_>>();
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
    }
}
