//! Checks a pinned map against the layout this daemon expects.
//!
//! aya reuses a pinned map by name without looking at it. A map left by a
//! daemon with another layout would then be read and written with the wrong
//! sizes, so every pin is compared field by field first and a mismatch is
//! refused with an error naming the map, the field and both values.

use std::{fmt, path::Path};

use aya::maps::MapInfo;
use ebpf_common::{
    ABI_VERSION,
    maps::{MapSpec, SPECS},
};

/// The four properties the kernel reports and the daemon depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl From<&MapSpec> for Layout {
    fn from(s: &MapSpec) -> Self {
        Self {
            map_type: s.map_type,
            key_size: s.key_size,
            value_size: s.value_size,
            max_entries: s.max_entries,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMismatch {
    pub field: &'static str,
    pub found: u32,
    pub expected: u32,
}

impl fmt::Display for FieldMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {}, expected {}",
            self.field, self.found, self.expected
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "pinned map {path} does not have the layout of ABI v{ABI_VERSION} ({}); refusing to reuse it: \
         remove the pin or run the daemon version that created it",
        .mismatches.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Mismatch {
        path: String,
        mismatches: Vec<FieldMismatch>,
    },
    #[error("cannot inspect pinned map {path}: {source}")]
    Inspect {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} is not in ebpf-common's SPECS; every pinned map needs an expected layout")]
    UnknownMap(String),
}

/// What was found at a map's pin path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// Nothing pinned yet: the loader will create and pin the map.
    Absent,
    /// A map with the expected layout: the loader will adopt it.
    Matches { id: u32 },
}

pub fn spec(name: &str) -> Result<&'static MapSpec, LayoutError> {
    SPECS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| LayoutError::UnknownMap(name.to_owned()))
}

/// Every field where `found` differs from `expected`, in a fixed order.
pub fn compare(found: &Layout, expected: &Layout) -> Vec<FieldMismatch> {
    [
        ("map type", found.map_type, expected.map_type),
        ("key size", found.key_size, expected.key_size),
        ("value size", found.value_size, expected.value_size),
        ("max entries", found.max_entries, expected.max_entries),
    ]
    .into_iter()
    .filter(|(_, f, e)| f != e)
    .map(|(field, found, expected)| FieldMismatch {
        field,
        found,
        expected,
    })
    .collect()
}

/// Compares the map pinned at `path` (if any) with `spec`.
pub fn check_pinned(path: &Path, spec: &MapSpec) -> Result<Pinned, LayoutError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Ok(Pinned::Absent);
    }
    let info = MapInfo::from_pin(path).map_err(|source| LayoutError::Inspect {
        path: shown.clone(),
        source,
    })?;
    let found = Layout {
        // The raw kernel number: aya's enum has no value for types it does not know.
        map_type: raw_map_type(&info),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    };
    let mismatches = compare(&found, &Layout::from(spec));
    if mismatches.is_empty() {
        Ok(Pinned::Matches { id: info.id() })
    } else {
        Err(LayoutError::Mismatch {
            path: shown,
            mismatches,
        })
    }
}

/// aya's `MapType` discriminants are the kernel's `bpf_map_type` numbers.
fn raw_map_type(info: &MapInfo) -> u32 {
    // A type aya does not know is a mismatch for every spec we have;
    // u32::MAX makes the error say so without inventing a number.
    info.map_type().map_or(u32::MAX, |t| t as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPECTED: Layout = Layout {
        map_type: 6,
        key_size: 4,
        value_size: 16,
        max_entries: 3,
    };

    #[test]
    fn identical_layouts_have_no_mismatch() {
        assert!(compare(&EXPECTED, &EXPECTED).is_empty());
    }

    #[test]
    fn every_differing_field_is_named() {
        let found = Layout {
            map_type: 2,
            value_size: 8,
            ..EXPECTED
        };
        let m = compare(&found, &EXPECTED);
        assert_eq!(
            m,
            vec![
                FieldMismatch {
                    field: "map type",
                    found: 2,
                    expected: 6
                },
                FieldMismatch {
                    field: "value size",
                    found: 8,
                    expected: 16
                },
            ]
        );
        let err = LayoutError::Mismatch {
            path: "/x".into(),
            mismatches: m,
        };
        let text = err.to_string();
        assert!(text.contains("map type is 2, expected 6"), "{text}");
        assert!(text.contains("value size is 8, expected 16"), "{text}");
        assert!(text.contains("refusing to reuse"), "{text}");
    }

    #[test]
    fn every_object_map_has_a_spec() {
        for object in [
            &super::super::objects::XDP,
            &super::super::objects::TC,
            &super::super::objects::LSM,
        ] {
            for map in object.maps() {
                assert!(spec(map).is_ok(), "{map} of {} has no spec", object.name);
            }
        }
        assert!(matches!(spec("NOPE"), Err(LayoutError::UnknownMap(_))));
    }
}
