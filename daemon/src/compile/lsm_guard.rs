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

use std::collections::BTreeMap;

use ebpf_common::lsm::{Verdict, action, entry_kind, op, verdict_flags};

use super::{
    lsm::{RuleSet, trie_entry},
    lsm_decide::rank,
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
    let literal = pattern
        .find(['*', '?', '[', '{', '\\'])
        .map_or(pattern, |i| &pattern[..i]);
    literal.rfind('/').map_or("", |i| &literal[..i])
}

impl RuleSet {
    /// Adds (or, where a file rule holds the same name, folds into its
    /// entry) the guard of every directory name that needs one.
    pub(super) fn guard_directory_names(&mut self) {
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
                if rank(&v) > rank(held) {
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
            let read = self.decide_key(&name, op::READ, &lookup).verdict;
            let write = self.decide_key(&name, op::WRITE, &lookup).verdict;
            if rank(&v) <= rank(&write) {
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
}
