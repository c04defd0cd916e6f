//! Configured map sizes.
//!
//! Each map's `max_entries` defaults to ebpf-common's SPECS. A different
//! size is applied when the map is created; a pinned map of another size is
//! a layout mismatch like any other (remove it with `palisade unload --maps`
//! to resize), never silently reused.

use std::collections::BTreeMap;

use ebpf_common::maps::{MapSpec, SPECS};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("no map named {0}; known maps: {1}")]
    UnknownMap(String, String),
    #[error("{0}: expected NAME=ENTRIES with ENTRIES a positive number")]
    Syntax(String),
    #[error(
        "{name} has a fixed size of {fixed}: the programs index it (reason codes, counter cells, the epoch)"
    )]
    Fixed { name: String, fixed: u32 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSizes(BTreeMap<&'static str, u32>);

impl MapSizes {
    /// Parses `NAME=ENTRIES`, e.g. `PAL_CT4=262144`.
    pub fn set(&mut self, arg: &str) -> Result<(), SizeError> {
        let (name, entries) = arg
            .split_once('=')
            .ok_or_else(|| SizeError::Syntax(arg.to_owned()))?;
        let entries: u32 = entries
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| SizeError::Syntax(arg.to_owned()))?;
        let spec = SPECS.iter().find(|s| s.name == name).ok_or_else(|| {
            let known: Vec<_> = SPECS.iter().map(|s| s.name).collect();
            SizeError::UnknownMap(name.to_owned(), known.join(", "))
        })?;
        if matches!(
            spec.map_type,
            ebpf_common::maps::kind::PERCPU_ARRAY | ebpf_common::maps::kind::ARRAY
        ) {
            return Err(SizeError::Fixed {
                name: name.to_owned(),
                fixed: spec.max_entries,
            });
        }
        if spec.map_type == ebpf_common::maps::kind::RINGBUF
            && (!entries.is_power_of_two() || entries < 4096)
        {
            return Err(SizeError::Syntax(format!(
                "{arg} (a ring buffer size is a power of two of at least 4096 bytes)"
            )));
        }
        self.0.insert(spec.name, entries);
        Ok(())
    }

    /// The configured size of `spec`'s map.
    pub fn entries(&self, spec: &MapSpec) -> u32 {
        self.0.get(spec.name).copied().unwrap_or(spec.max_entries)
    }

    /// `spec` with the configured size: what a pinned map must match.
    pub fn apply(&self, spec: &MapSpec) -> MapSpec {
        MapSpec {
            max_entries: self.entries(spec),
            ..*spec
        }
    }

    pub fn overrides(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.0.iter().map(|(k, v)| (*k, *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_parsed_and_checked() {
        let mut s = MapSizes::default();
        s.set("PAL_CT4=262144").unwrap();
        let ct = SPECS.iter().find(|x| x.name == "PAL_CT4").unwrap();
        assert_eq!(s.entries(ct), 262_144);
        assert_eq!(s.apply(ct).key_size, ct.key_size);
        let policy = SPECS.iter().find(|x| x.name == "PAL_POLICY").unwrap();
        assert_eq!(s.entries(policy), policy.max_entries);
        assert!(matches!(
            s.set("PAL_NOPE=1"),
            Err(SizeError::UnknownMap(..))
        ));
        assert!(matches!(s.set("PAL_CT4=0"), Err(SizeError::Syntax(_))));
        assert!(matches!(s.set("PAL_CT4"), Err(SizeError::Syntax(_))));
        for fixed in ["PAL_TC_STATS=9", "PAL_CNT_CELLS=8192", "PAL_EPOCH=2"] {
            assert!(
                matches!(s.set(fixed), Err(SizeError::Fixed { .. })),
                "{fixed} accepted"
            );
        }
    }
}
