//! Conntrack across an ABI change.
//!
//! A daemon of a new ABI pins new maps, so its conntrack starts empty, and
//! every live flow would be judged afresh at its next packet as if that
//! packet opened it. A flow whose next packet comes from the side that may
//! not open it (a server pushing to a client, from a pod whose egress is
//! isolated) would then be dropped until the other side spoke. So when an
//! older ABI's conntrack shares this one's layout
//! ([`ebpf_common::CT_LAYOUT_SINCE`]), the daemon taking over copies its
//! entries before it takes the links over. Each copy carries an epoch that
//! is not current: the flow is judged again at its next packet, from the
//! side that opened it, by the policy and identities now in force. Each
//! copied flow also marks its endpoint as having tracked a flow opened in
//! its direction (`PAL_EP_OPENED`), so that its replies are still looked
//! up in conntrack (`ebpf_common::datapath::opened_index`).
//!
//! ABIs from [`ebpf_common::CT_PER_END_SINCE`] kept an entry per flow and
//! local end, where this one keeps one per flow with a half for each local
//! end: their entries are converted, each into its half of the flow's.
//! The two layouts are told apart by the old map's value size, not by its
//! ABI alone, so that a pin directory renamed to an older ABI's (the chaos
//! suite's `abi-upgrade`) is copied as what it holds.
//!
//! The fragment table (`PAL_FRAGS`) is carried the same way, from ABIs
//! whose table is this one's ([`ebpf_common::FRAG_LAYOUT_SINCE`]): a
//! datagram whose first fragment passed the older programs has its later
//! fragments follow it under the new ones, to the flow the first one
//! opened (itself judged again, as above). Without the copy they were
//! dropped as `drop_fragment_unknown`.

use std::path::Path;

use anyhow::Context as _;

use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData},
};
use ebpf_common::{
    ABI_VERSION, CT_LAYOUT_SINCE, CT_PER_END_SINCE, FRAG_LAYOUT_SINCE,
    datapath::{Ct4Key, Ct6Key, CtEnd, CtValue, FragKey, FragValue, opened_index},
    maps,
};

use crate::paths::PinDir;

/// What was copied, and what could not be.
#[derive(Debug, Default)]
pub struct Carried {
    /// Flows copied, by the ABI they came from (each counted once: one an
    /// earlier ABI's copy had added gains its ends uncounted).
    pub flows: Vec<(u32, u64)>,
    /// Fragmented datagrams copied, by the ABI they came from.
    pub datagrams: Vec<(u32, u64)>,
    pub errors: Vec<String>,
}

/// Copies the tracked flows of every older ABI under `pins`' base whose
/// conntrack layout is this one's, each stamped with `stale_epoch`, and
/// the fragmented datagrams of those whose fragment table is.
pub fn carry_over(pins: &PinDir, stale_epoch: u32) -> Carried {
    let mut carried = Carried::default();
    for old in pins.other_abis() {
        let abi = old.abi();
        if (FRAG_LAYOUT_SINCE..ABI_VERSION).contains(&abi) {
            match copy_fragments(&old.map(maps::FRAGS), &pins.map(maps::FRAGS)) {
                Ok(n) => carried.datagrams.push((abi, n)),
                Err(e) => carried
                    .errors
                    .push(format!("fragment table of ABI v{abi}: {e:#}")),
            }
        }
        if !(CT_PER_END_SINCE..ABI_VERSION).contains(&abi) {
            tracing::info!(
                "ABI v{abi}'s conntrack is neither this one's (v{CT_LAYOUT_SINCE} to v{ABI_VERSION}) nor one it converts (from v{CT_PER_END_SINCE}): its flows are judged afresh"
            );
            continue;
        }
        let mut flows = 0;
        for result in [
            copy::<Ct4Key>(pins, &old.map(maps::CT4), &pins.map(maps::CT4), stale_epoch),
            copy::<Ct6Key>(pins, &old.map(maps::CT6), &pins.map(maps::CT6), stale_epoch),
        ] {
            match result {
                Ok(n) => flows += n,
                Err(e) => carried
                    .errors
                    .push(format!("conntrack of ABI v{abi}: {e:#}")),
            }
        }
        carried.flows.push((abi, flows));
    }
    carried
}

/// The pinned hash map at `path`, its key and value sizes checked against
/// `K` and `V`.
fn open<K: Pod, V: Pod>(path: &Path) -> anyhow::Result<HashMap<MapData, K, V>> {
    let map = Map::from_map_data(MapData::from_pin(path)?)?;
    Ok(HashMap::try_from(map)?)
}

/// The older ABI's map at `from`; `None` where that ABI had none (or it
/// was removed): nothing to carry.
fn open_old<K: Pod, V: Pod>(from: &Path) -> anyhow::Result<Option<HashMap<MapData, K, V>>> {
    match open(from) {
        Ok(map) => Ok(Some(map)),
        Err(_) if !from.exists() => Ok(None),
        Err(e) => Err(e.context(from.display().to_string())),
    }
}

/// A conntrack key, and where the layouts before `CT_LAYOUT_SINCE` said
/// which end an entry was: the first of its pad bytes.
trait Key: Pod {
    fn take_end(&mut self) -> usize;
}

impl Key for Ct4Key {
    fn take_end(&mut self) -> usize {
        usize::from(std::mem::take(&mut self._pad[0]) & 1)
    }
}

impl Key for Ct6Key {
    fn take_end(&mut self) -> usize {
        usize::from(std::mem::take(&mut self._pad[0]) & 1)
    }
}

/// Copies an older ABI's conntrack map at `from` into this one's at `to`;
/// returns the flows it added (a flow already there, from another older
/// ABI or the other end's entry, gains its ends and is not counted again).
fn copy<K: Key>(pins: &PinDir, from: &Path, to: &Path, stale_epoch: u32) -> anyhow::Result<u64> {
    if !from.exists() {
        return Ok(0);
    }
    let info = aya::maps::MapInfo::from_pin(from)
        .with_context(|| format!("reading {}", from.display()))?;
    let mut new = open::<K, CtValue>(to)?;
    let mut opened: Array<MapData, u32> = Array::try_from(Map::from_map_data(MapData::from_pin(
        pins.map(maps::OPENED),
    )?)?)?;
    // Each end stamped stale, and its mark set before the entry is
    // written, as the datapath does: an end is never there without it.
    let mut merge = |key: &K, ends: &[(usize, CtEnd)]| -> anyhow::Result<u64> {
        let held = new.get(key, 0).ok();
        let added = u64::from(held.is_none());
        let mut value = held.unwrap_or_default();
        for &(at, mut end) in ends.iter().filter(|(_, end)| end.endpoint != 0) {
            end.epoch = stale_epoch;
            opened.set(opened_index(end.endpoint, u32::from(end.direction)), &1, 0)?;
            value.ends[at] = end;
        }
        new.insert(key, &value, 0)?;
        Ok(added)
    };
    let mut n = 0;
    if info.value_size() as usize == size_of::<CtValue>() {
        let old = open::<K, CtValue>(from).with_context(|| from.display().to_string())?;
        for entry in old.iter() {
            // An entry the kernel evicted while we walked ends the walk
            // early at worst: those flows are judged afresh, as without
            // the copy.
            let Ok((key, value)) = entry else { break };
            n += merge(&key, &[(0, value.ends[0]), (1, value.ends[1])])?;
        }
        return Ok(n);
    }
    let old = open::<K, CtEnd>(from).with_context(|| from.display().to_string())?;
    for entry in old.iter() {
        // As above: an eviction mid-walk ends it early at worst.
        let Ok((mut key, end)) = entry else { break };
        let at = key.take_end();
        n += merge(&key, &[(at, end)])?;
    }
    Ok(n)
}

/// Copies the datagrams of the fragment table at `from` into `to`. Its
/// entries name no endpoint and no epoch: a later fragment takes the ports
/// and transport protocol of its first and then meets conntrack, which
/// judges it as usual.
fn copy_fragments(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let Some(old) = open_old::<FragKey, FragValue>(from)? else {
        return Ok(0);
    };
    let mut new = open::<FragKey, FragValue>(to)?;
    let mut n = 0;
    for entry in old.iter() {
        // As for conntrack: an eviction mid-walk ends it early at worst.
        let Ok((key, value)) = entry else { break };
        new.insert(&key, &value, 0)?;
        n += 1;
    }
    Ok(n)
}
