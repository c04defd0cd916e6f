//! What the LSM programs decide for one operation on one path, step by
//! step as `ebpf-lsm` does it, from the same compiled rule sets: the
//! `fromSource` set, the longest trie entry, a non-recursive directory's
//! children, then the patterns; a directory opened by its own key.
//! `palisade explain` answers from here, and the tests hold it to the
//! scenarios' expectations, so the two readings of the rules cannot drift
//! apart.

use std::collections::HashMap;

use ebpf_common::lsm::{
    KEY_PATH_BYTES, PathRule, PatternSet, Verdict, action, entry_kind, op, verdict_flags,
};

use super::{
    lsm::RuleSet,
    patterns::{automaton, run},
};

/// What decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// The section's default (no entry more specific than the root).
    Default,
    /// A file's own rules (and the patterns that match that file).
    File(String),
    /// The guard on a directory's name, for what lies in it.
    DirName(String),
    /// A directory rule; `deeper` when the path lies below a
    /// non-recursive directory's children.
    Dir {
        path: String,
        recursive: bool,
        deeper: bool,
    },
    /// A pattern.
    Pattern(String),
    /// A guard pattern: directories whose renaming would carry what a
    /// pattern reaches out of its reach (see [`super::lsm_guard`]).
    Guard(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub by: DecidedBy,
    /// The `fromSource` executable whose set was used.
    pub source: Option<String>,
    /// The path was longer than a key and the stricter of a non-recursive
    /// directory's two verdicts was taken.
    pub ambiguous: bool,
}

impl Decision {
    /// Whether the operation fails (EPERM), for a caller who owns the file
    /// or not (`ownerOnly`). Audit blocks nothing.
    pub fn blocks(&self, caller_owns: bool) -> bool {
        self.verdict.action == action::BLOCK
            && !(caller_owns && self.verdict.flags & verdict_flags::OWNER_ONLY != 0)
    }
}

impl RuleSet {
    /// The decision for operation `which` ([`ebpf_common::lsm::op`]) on
    /// `path` by a process running `exe` (`None`: not known, or a hook
    /// that does not look at it). A `path` ending in `/` (not the root)
    /// is a directory itself: opened (a read), it is judged as what lies
    /// in it, by its own key, as `file_open` does; written (renamed,
    /// removed, made, its mode or owner changed), by its name, as the
    /// path hooks do (see [`super::lsm_guard`]).
    pub fn decide(&self, path: &str, which: usize, exe: Option<&str>) -> Decision {
        if let Some(exe) = exe
            && let Some((_, own)) = self.sources.iter().find(|(e, _)| e == exe.as_bytes())
        {
            return Decision {
                source: Some(exe.to_owned()),
                ..own.decide(path, which, None)
            };
        }
        let name = path.trim_end_matches('/');
        let lookup = self.lookup();
        if !name.is_empty() && which == op::WRITE {
            // A guard pattern judges the directory renamed.
            self.decide_key(name, which, &lookup, name != path)
        } else {
            self.decide_key(path, which, &lookup, false)
        }
    }

    /// What [`RuleSet::decide_key`] reads, for a caller that asks about
    /// many paths of an unchanged set.
    pub(super) fn lookup(&self) -> Lookup {
        Lookup {
            by_key: (self.entries.iter().enumerate())
                .map(|(i, (_, k, _))| (k.clone(), i))
                .collect(),
            patterns: automaton(&self.patterns),
        }
    }

    /// The decision for `path` as the kernel looks it up, by the set's
    /// [`Lookup`]; `renamed_dir`: the path is a directory's, renamed.
    pub(super) fn decide_key(
        &self,
        path: &str,
        which: usize,
        lookup: &Lookup,
        renamed_dir: bool,
    ) -> Decision {
        let mut key = path.as_bytes().to_vec();
        key.push(0);
        let len = key.len();
        key.truncate(KEY_PATH_BYTES);
        // The longest entry the key starts with, as the trie finds it.
        let (entry, rule) = (0..=key.len())
            .rev()
            .find_map(|l| lookup.position(&key[..l]))
            .map(|i| (self.entries[i].1.clone(), self.entries[i].2.0))
            .unwrap_or_default();
        let entry =
            String::from_utf8_lossy(entry.strip_suffix(&[0]).unwrap_or(&entry)).into_owned();
        let mut d = Decision {
            verdict: rule.direct[which],
            by: by_entry(&rule, entry, false),
            source: None,
            ambiguous: false,
        };
        if rule.kind == entry_kind::DIR {
            let end = (len - 1).min(KEY_PATH_BYTES);
            let rest = key.get(rule.len as usize..end).unwrap_or_default();
            if rest.contains(&b'/') {
                d.verdict = rule.deeper[which];
                d.by = by_entry(&rule, entry_of(&d.by), true);
            } else if len - 1 > KEY_PATH_BYTES {
                let (a, b) = (rule.direct[which], rule.deeper[which]);
                d.verdict = if b.action > a.action { b } else { a };
                d.ambiguous = true;
            }
        }
        // As the kernel's `judge`: a file's or a directory name's own entry
        // takes no ordinary pattern; a guard raises whatever was decided.
        let own = rule.kind == entry_kind::FILE || rule.kind == entry_kind::DIR_NAME;
        if self.patterns.is_empty() || (own && !renamed_dir) {
            return d;
        }
        let (pattern, guard) = run(&lookup.patterns, path.as_bytes(), which, renamed_dir);
        if let Some((slot, v)) = pattern.filter(|_| !own) {
            d.verdict = v;
            d.by = DecidedBy::Pattern(self.patterns[slot].pattern.clone());
            d.ambiguous = false;
        }
        if let Some((slot, g)) = guard
            && g.strictness() > d.verdict.strictness()
        {
            d.verdict = g;
            d.by = DecidedBy::Guard(self.patterns[slot].pattern.clone());
            d.ambiguous = false;
        }
        d
    }
}

/// A set's entries by their keys (each key's position in
/// [`RuleSet::entries`]) and its patterns built into their automaton:
/// asking about a path then costs a hash lookup per prefix of it, not a
/// pass over every entry, and no automaton build.
pub(super) struct Lookup {
    by_key: HashMap<Vec<u8>, usize>,
    patterns: PatternSet,
}

impl Lookup {
    /// The position of the entry keyed `key`, if one is.
    pub(super) fn position(&self, key: &[u8]) -> Option<usize> {
        self.by_key.get(key).copied()
    }
}

fn entry_of(by: &DecidedBy) -> String {
    match by {
        DecidedBy::File(p)
        | DecidedBy::DirName(p)
        | DecidedBy::Pattern(p)
        | DecidedBy::Guard(p) => p.clone(),
        DecidedBy::Dir { path, .. } => path.clone(),
        DecidedBy::Default => String::new(),
    }
}

fn by_entry(rule: &PathRule, path: String, deeper: bool) -> DecidedBy {
    match rule.kind {
        entry_kind::FILE => DecidedBy::File(path),
        entry_kind::DIR_NAME => DecidedBy::DirName(path),
        entry_kind::DIR | entry_kind::DIR_RECURSIVE => DecidedBy::Dir {
            path,
            recursive: rule.kind == entry_kind::DIR_RECURSIVE,
            deeper,
        },
        _ => DecidedBy::Default,
    }
}
