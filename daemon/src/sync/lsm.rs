//! The process and file share of a pass: rule sets and the pods that use
//! them.
//!
//! Sets are shared by content: pods with the same rules use one set. A
//! changed pod gets a set written whole under a fresh id before its
//! `PodSets` entry is rewritten in one map update, and a set nothing uses
//! any more is deleted after that: a process sees the old rules or the new
//! ones, never a mix. Sets of an earlier daemon (whose contents this one
//! does not know) are replaced the same way on its first pass.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use ebpf_common::lsm::{CAN_BLOCK, CGROUP_LEVELS, HAS_PATTERNS, HAS_SOURCES, PodSets, SET_ID_MASK};

use crate::{
    compile::{
        lsm::{LsmDesired, RuleSet},
        patterns::automaton,
    },
    datapath::{DatapathError, lsm::LsmMaps},
};

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup`, or on a
/// hybrid host `/sys/fs/cgroup/unified`; `None` without one. Pod cgroups
/// lie below it, and their level (what the LSM programs look up) counts
/// from it.
/// Looked up once: the mount does not move under a running process, and
/// every pod's cgroup is resolved against it on every pass.
pub fn cgroup2_root() -> Option<PathBuf> {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC))
    })
    .clone()
}

/// What the LSM share of one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LsmReport {
    /// Pods whose sets were (re)written, and those that left.
    pub pods_written: Vec<String>,
    pub pods_removed: usize,
    /// Pods whose rules are not in force, with the reason.
    pub not_enforced: BTreeMap<String, String>,
    /// The cgroup id of each pod found this pass, for naming events.
    pub cgroups: BTreeMap<u64, String>,
    pub errors: Vec<String>,
}

pub struct LsmState {
    maps: LsmMaps,
    /// Sets in the trie, by content.
    sets: HashMap<RuleSet, u32>,
    /// Sets an earlier daemon left, to go once nothing uses them.
    inherited: BTreeSet<u32>,
    next: u32,
}

/// A pod cgroup's id (the cgroup v2 directory's inode number) and its
/// depth below [`cgroup2_root`].
pub fn cgroup_id(dir: &str) -> Result<(u64, u32), String> {
    let path = Path::new(dir);
    let root = cgroup2_root().ok_or("this node has no cgroup v2 hierarchy")?;
    let below = path
        .strip_prefix(&root)
        .map_err(|_| format!("cgroup {dir} is not below {}", root.display()))?;
    let meta = std::fs::metadata(path).map_err(|e| format!("cgroup {dir}: {e}"))?;
    if !meta.is_dir() {
        return Err(format!("cgroup {dir} is not a directory"));
    }
    Ok((meta.ino(), below.components().count() as u32))
}

impl LsmState {
    pub fn new(maps: LsmMaps) -> Result<Self, DatapathError> {
        let inherited = maps.sets()?;
        let next = inherited.iter().max().copied().unwrap_or(0) & SET_ID_MASK;
        Ok(Self {
            maps,
            sets: HashMap::new(),
            inherited,
            next,
        })
    }

    fn fresh_id(&mut self) -> u32 {
        loop {
            // Ids stay below the flag bits.
            self.next = (self.next + 1) & SET_ID_MASK;
            self.next = self.next.max(1);
            let id = self.next;
            if !self.inherited.contains(&id) && !self.sets.values().any(|&v| v == id) {
                return id;
            }
        }
    }

    /// The id of `set` in the trie (with [`HAS_SOURCES`] where it has
    /// `fromSource` sets, [`HAS_PATTERNS`] where it has patterns,
    /// [`CAN_BLOCK`] where it can block), writing
    /// it first if it is new: its sources' sets, its patterns, then its
    /// entries, then the entries that lead to the sources.
    fn ensure(&mut self, set: &RuleSet) -> Result<u32, DatapathError> {
        let mut flag = 0;
        if !set.sources.is_empty() {
            flag |= HAS_SOURCES;
        }
        if !set.patterns.is_empty() {
            flag |= HAS_PATTERNS;
        }
        if set.can_block() {
            flag |= CAN_BLOCK;
        }
        if let Some(&id) = self.sets.get(set) {
            return Ok(id | flag);
        }
        let mut own = Vec::new();
        for (_, exe_set) in &set.sources {
            own.push(self.ensure(exe_set)?);
        }
        let id = self.fresh_id();
        let written = self.write_set(set, id, &own);
        if let Err(e) = written {
            // Half a set must not stay behind unnamed.
            self.remove_set(set, id);
            return Err(e);
        }
        self.sets.insert(set.clone(), id);
        Ok(id | flag)
    }

    fn write_set(&mut self, set: &RuleSet, id: u32, own: &[u32]) -> Result<(), DatapathError> {
        if !set.patterns.is_empty() {
            self.maps.write_patterns(id, &automaton(&set.patterns))?;
        }
        for (prefixlen, data, rule) in set.keys(id) {
            self.maps.write_rule(prefixlen, data, rule)?;
        }
        for ((prefixlen, data, _), own) in set.source_keys(id).zip(own) {
            self.maps.write_source(prefixlen, data, *own)?;
        }
        Ok(())
    }

    /// Removes set `id`'s entries; `false` if some could not be removed.
    fn remove_set(&mut self, set: &RuleSet, id: u32) -> bool {
        let mut ok = true;
        for (prefixlen, data, _) in set.source_keys(id) {
            ok &= self.maps.remove_source(prefixlen, data).is_ok();
        }
        for (prefixlen, data, _) in set.keys(id) {
            ok &= self.maps.remove_rule(prefixlen, data).is_ok();
        }
        if !set.patterns.is_empty() {
            ok &= self.maps.remove_patterns(id).is_ok();
        }
        ok
    }

    pub fn apply(&mut self, desired: &LsmDesired) -> Result<LsmReport, DatapathError> {
        let mut report = LsmReport::default();
        let before = self.maps.pods()?;
        let mut wanted: BTreeMap<u64, PodSets> = BTreeMap::new();
        let mut levels = BTreeSet::new();
        let mut at_level: Vec<(u32, &String)> = Vec::new();
        for (pod, rules) in &desired.pods {
            let (cgroup, level) = match cgroup_id(&rules.cgroup) {
                Ok(found) => found,
                Err(why) => {
                    report.not_enforced.insert(pod.clone(), why);
                    continue;
                }
            };
            report.cgroups.insert(cgroup, pod.clone());
            let mut sets = PodSets::default();
            let mut failed = None;
            for (set, slot) in [
                (&rules.process, &mut sets.process),
                (&rules.file, &mut sets.file),
            ] {
                if let Some(set) = set {
                    match self.ensure(set) {
                        Ok(id) => *slot = id,
                        Err(e) => failed = Some(e.to_string()),
                    }
                }
            }
            if let Some(e) = failed {
                // The pod keeps the sets it had (its last good state).
                report.errors.push(format!("{pod}: {e}"));
                report.not_enforced.insert(pod.clone(), e);
                if let Some(old) = before.get(&cgroup) {
                    wanted.insert(cgroup, *old);
                }
                continue;
            }
            levels.insert(level);
            at_level.push((level, pod));
            if before.get(&cgroup) != Some(&sets) {
                match self.maps.set_pod(cgroup, sets) {
                    Ok(()) => report.pods_written.push(pod.clone()),
                    Err(e) => {
                        report.errors.push(e.to_string());
                        report.not_enforced.insert(pod.clone(), e.to_string());
                        if let Some(old) = before.get(&cgroup) {
                            wanted.insert(cgroup, *old);
                        }
                        continue;
                    }
                }
            }
            wanted.insert(cgroup, sets);
        }
        // Deepest levels first: a container's cgroup below its pod's must
        // find the pod before anything above it.
        let levels: Vec<u32> = levels.into_iter().rev().take(CGROUP_LEVELS).collect();
        if let Err(e) = self.maps.set_levels(&levels) {
            report.errors.push(e.to_string());
        }
        // The programs look a process's ancestors up at those levels only:
        // below a pod cgroup at another, only the pod cgroup's own
        // processes would be judged, so the pod is said not to be.
        for (level, pod) in at_level.into_iter().filter(|(l, _)| !levels.contains(l)) {
            report.not_enforced.insert(
                pod.clone(),
                format!(
                    "its cgroup is at level {level}, and pods' cgroups here lie at more than the {CGROUP_LEVELS} levels the programs look up (the deepest kept): processes in cgroups below it are not judged"
                ),
            );
        }
        for cgroup in before.keys().filter(|c| !wanted.contains_key(c)) {
            match self.maps.remove_pod(*cgroup) {
                Ok(()) => report.pods_removed += 1,
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        self.retire(&wanted, &mut report);
        Ok(report)
    }

    /// Deletes the sets no pod uses any more.
    fn retire(&mut self, wanted: &BTreeMap<u64, PodSets>, report: &mut LsmReport) {
        let mut used: BTreeSet<u32> = wanted
            .values()
            .flat_map(|s| [s.process, s.file])
            .filter(|&id| id != 0)
            .map(|id| id & SET_ID_MASK)
            .collect();
        // A used set's fromSource sets are used too.
        for (set, id) in &self.sets {
            if used.contains(id) {
                for (_, exe_set) in &set.sources {
                    if let Some(&own) = self.sets.get(exe_set) {
                        used.insert(own);
                    }
                }
            }
        }
        // So are those of a set an earlier daemon left that a pod still
        // names (its last good state, where this pass could not write one).
        let inherited_used: BTreeSet<u32> = self.inherited.intersection(&used).copied().collect();
        if !inherited_used.is_empty() {
            match self.maps.source_children(&inherited_used) {
                Ok(children) => used.extend(children),
                Err(e) => {
                    // Without knowing them, keep every inherited set.
                    report.errors.push(e.to_string());
                    used.extend(self.inherited.iter().copied());
                }
            }
        }
        let unused: Vec<(RuleSet, u32)> = self
            .sets
            .iter()
            .filter(|(_, id)| !used.contains(id))
            .map(|(set, id)| (set.clone(), *id))
            .collect();
        for (set, id) in unused {
            if self.remove_set(&set, id) {
                self.sets.remove(&set);
            } else {
                report
                    .errors
                    .push(format!("removing rule set {id}: some entries stay"));
            }
        }
        let stale: BTreeSet<u32> = self
            .inherited
            .iter()
            .filter(|id| !used.contains(id))
            .copied()
            .collect();
        if !stale.is_empty() {
            match self.maps.remove_sets(&stale) {
                Ok(()) => self.inherited.retain(|id| used.contains(id)),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_must_lie_below_the_mount() {
        assert!(cgroup_id("/tmp").unwrap_err().contains("not below"));
        let Some(root) = cgroup2_root() else {
            eprintln!("skipped: no cgroup v2 hierarchy here");
            return;
        };
        let missing = root.join("palisade-no-such-cgroup");
        assert!(
            cgroup_id(&missing.display().to_string())
                .unwrap_err()
                .contains("No such file")
        );
        let (id, level) = cgroup_id(&root.display().to_string()).unwrap();
        assert_eq!(level, 0);
        assert_ne!(id, 0);
    }
}
