//! Reads the per-CPU counters out of the pinned stats maps.
//!
//! The maps outlive the daemon, so these counts are monotonic across restarts
//! that keep the pins.

use std::path::Path;

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use ebpf_common::{
    reason,
    stats::{Counter, direction, stat_index},
};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterRow {
    pub direction: &'static str,
    pub reason: &'static str,
    pub events: u64,
    pub bytes: u64,
}

pub fn direction_name(d: u32) -> &'static str {
    match d {
        direction::INGRESS => "ingress",
        direction::EGRESS => "egress",
        direction::LOCAL => "local",
        _ => "unknown",
    }
}

/// Sums every (direction, reason) cell across CPUs; cells that never counted
/// are left out.
pub fn read_pinned(path: &Path) -> Result<Vec<CounterRow>, MapError> {
    let map = Map::from_map_data(MapData::from_pin(path)?)?;
    let array: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(map)?;
    let mut rows = Vec::new();
    for d in 0..direction::COUNT {
        for r in 0..reason::COUNT {
            let per_cpu = array.get(&stat_index(d, r), 0)?;
            let total = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                events: acc.events + c.events,
                bytes: acc.bytes + c.bytes,
            });
            if total != Counter::default() {
                rows.push(CounterRow {
                    direction: direction_name(d),
                    reason: reason::name(r),
                    events: total.events,
                    bytes: total.bytes,
                });
            }
        }
    }
    Ok(rows)
}
