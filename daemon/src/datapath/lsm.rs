//! Typed handles on the LSM maps (`ebpf_common::lsm`): pods by cgroup id,
//! rule set entries, the cgroup levels. Written by the syncer alone.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key};
use ebpf_common::{
    lsm::{CGROUP_LEVELS, LsmConfig, PathRule, PatternSet, PodSets, RuleData, SET_ID_MASK},
    maps,
};

use super::maps::{DatapathError, open_map, removed};
use crate::paths::PinDir;

pub struct LsmMaps {
    pods: HashMap<MapData, u64, PodSets>,
    rules: LpmTrie<MapData, RuleData, PathRule>,
    sources: LpmTrie<MapData, RuleData, u32>,
    patterns: HashMap<MapData, u32, PatternSet>,
    config: Array<MapData, LsmConfig>,
}

impl LsmMaps {
    pub fn open(pins: &PinDir) -> Result<Self, DatapathError> {
        let conv = |name: &'static str| move |source| DatapathError::Open { name, source };
        Ok(Self {
            pods: HashMap::try_from(open_map(pins, maps::LSM_PODS)?)
                .map_err(conv(maps::LSM_PODS))?,
            rules: LpmTrie::try_from(open_map(pins, maps::LSM_RULES)?)
                .map_err(conv(maps::LSM_RULES))?,
            sources: LpmTrie::try_from(open_map(pins, maps::LSM_SOURCES)?)
                .map_err(conv(maps::LSM_SOURCES))?,
            patterns: HashMap::try_from(open_map(pins, maps::LSM_PATTERNS)?)
                .map_err(conv(maps::LSM_PATTERNS))?,
            config: Array::try_from(open_map(pins, maps::LSM_CONFIG)?)
                .map_err(conv(maps::LSM_CONFIG))?,
        })
    }

    /// Every pod the kernel judges: cgroup id -> its sets.
    pub fn pods(&self) -> Result<BTreeMap<u64, PodSets>, DatapathError> {
        self.pods
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| DatapathError::Read {
                name: maps::LSM_PODS,
                source,
            })
    }

    /// The set ids that have entries in the trie.
    pub fn sets(&self) -> Result<BTreeSet<u32>, DatapathError> {
        let mut out = BTreeSet::new();
        for key in self.rules.keys() {
            let key = key.map_err(|source| DatapathError::Read {
                name: maps::LSM_RULES,
                source,
            })?;
            out.insert(key.data().set);
        }
        for key in self.patterns.keys() {
            out.insert(key.map_err(|source| DatapathError::Read {
                name: maps::LSM_PATTERNS,
                source,
            })?);
        }
        Ok(out)
    }

    /// The `fromSource` sets that the sets in `parents` lead to (their
    /// ids without flags): what an earlier daemon's sets still use.
    pub fn source_children(&self, parents: &BTreeSet<u32>) -> Result<BTreeSet<u32>, DatapathError> {
        let mut out = BTreeSet::new();
        for entry in self.sources.iter() {
            let (key, child) = entry.map_err(|source| DatapathError::Read {
                name: maps::LSM_SOURCES,
                source,
            })?;
            if parents.contains(&key.data().set) {
                out.insert(child & SET_ID_MASK);
            }
        }
        Ok(out)
    }

    /// Set `set`'s patterns (written before any pod names the set).
    pub fn write_patterns(&mut self, set: u32, patterns: &PatternSet) -> Result<(), DatapathError> {
        self.patterns
            .insert(&set, patterns, 0)
            .map_err(|source| DatapathError::Write {
                name: maps::LSM_PATTERNS,
                what: format!("the patterns of rule set {set}"),
                source,
            })
    }

    pub fn remove_patterns(&mut self, set: u32) -> Result<(), DatapathError> {
        removed(self.patterns.remove(&set), maps::LSM_PATTERNS, || {
            format!("removing the patterns of rule set {set}")
        })
    }

    pub fn write_rule(
        &mut self,
        prefixlen: u32,
        data: RuleData,
        rule: PathRule,
    ) -> Result<(), DatapathError> {
        self.rules
            .insert(&Key::new(prefixlen, data), &rule, 0)
            .map_err(|source| DatapathError::Write {
                name: maps::LSM_RULES,
                what: format!("an entry of rule set {}", data.set),
                source,
            })
    }

    pub fn remove_rule(&mut self, prefixlen: u32, data: RuleData) -> Result<(), DatapathError> {
        removed(
            self.rules.remove(&Key::new(prefixlen, data)),
            maps::LSM_RULES,
            || format!("removing an entry of rule set {}", data.set),
        )
    }

    /// Removes every entry of the sets in `sets` (those of an earlier
    /// daemon, whose contents this one never knew).
    pub fn remove_sets(&mut self, sets: &BTreeSet<u32>) -> Result<(), DatapathError> {
        let mut doomed = Vec::new();
        for key in self.rules.keys() {
            let key = key.map_err(|source| DatapathError::Read {
                name: maps::LSM_RULES,
                source,
            })?;
            if sets.contains(&key.data().set) {
                doomed.push(key);
            }
        }
        for key in doomed {
            self.remove_rule(key.prefix_len(), key.data())?;
        }
        let mut doomed = Vec::new();
        for key in self.sources.keys() {
            let key = key.map_err(|source| DatapathError::Read {
                name: maps::LSM_SOURCES,
                source,
            })?;
            if sets.contains(&key.data().set) {
                doomed.push(key);
            }
        }
        for key in doomed {
            self.remove_source(key.prefix_len(), key.data())?;
        }
        let doomed: Vec<u32> = self
            .patterns
            .keys()
            .filter_map(Result::ok)
            .filter(|set| sets.contains(set))
            .collect();
        for set in doomed {
            self.remove_patterns(set)?;
        }
        Ok(())
    }

    /// Processes running `exe` (the key) use set `own` instead of the
    /// key's set.
    pub fn write_source(
        &mut self,
        prefixlen: u32,
        data: RuleData,
        own: u32,
    ) -> Result<(), DatapathError> {
        self.sources
            .insert(&Key::new(prefixlen, data), &own, 0)
            .map_err(|source| DatapathError::Write {
                name: maps::LSM_SOURCES,
                what: format!("a fromSource entry of rule set {}", data.set),
                source,
            })
    }

    pub fn remove_source(&mut self, prefixlen: u32, data: RuleData) -> Result<(), DatapathError> {
        removed(
            self.sources.remove(&Key::new(prefixlen, data)),
            maps::LSM_SOURCES,
            || format!("removing a fromSource entry of rule set {}", data.set),
        )
    }

    pub fn set_pod(&mut self, cgroup: u64, sets: PodSets) -> Result<(), DatapathError> {
        self.pods
            .insert(&cgroup, &sets, 0)
            .map_err(|source| DatapathError::Write {
                name: maps::LSM_PODS,
                what: format!("the rule sets of cgroup {cgroup}"),
                source,
            })
    }

    pub fn remove_pod(&mut self, cgroup: u64) -> Result<(), DatapathError> {
        removed(self.pods.remove(&cgroup), maps::LSM_PODS, || {
            format!("removing cgroup {cgroup}")
        })
    }

    /// The cgroup levels pods live at (at most [`CGROUP_LEVELS`], deepest
    /// kept first when there are more: see `sync::lsm`).
    pub fn set_levels(&mut self, levels: &[u32]) -> Result<(), DatapathError> {
        let mut config = LsmConfig::default();
        for (slot, level) in config
            .levels
            .iter_mut()
            .zip(levels.iter().take(CGROUP_LEVELS))
        {
            *slot = *level;
        }
        self.config
            .set(0, &config, 0)
            .map_err(|source| DatapathError::Write {
                name: maps::LSM_CONFIG,
                what: "the pod cgroup levels".into(),
                source,
            })
    }
}
