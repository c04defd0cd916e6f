//! Typed handles on the pinned datapath maps.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use ebpf_common::{
    datapath::{
        ADDR_LEN, EndpointSlot, EndpointValue, IdentityValue, POLICY_PREFIX_FIXED,
        POLICY_PREFIX_FULL, POLICY_PREFIX_PROTO, PolicyKey, PolicyValue, SlotEndpoint,
        SourcePrefixKey, XdpPodDenyKey, direction, endpoint_flags, endpoint_slot, identity,
    },
    maps,
};
use ipnet::IpNet;

use super::{
    address_map::AddressMap,
    batch,
    ports::{self, PortPrefix},
};
use crate::{
    compile::{PolicyEntry, Sources},
    paths::PinDir,
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("opening pinned map {name}: {source}")]
    Open {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("writing {what} into {name}: {source} (is the map full? its size is configurable)")]
    Write {
        name: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    #[error("{what} from {name}: {source}")]
    Remove {
        name: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    #[error("reading {name}: {source}")]
    Read {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("invalid prefix /{len} for {addr}")]
    Prefix { addr: IpAddr, len: u8 },
}

/// A removal that finds nothing to remove has done its job. aya reports
/// a missing key as the system call's `ENOENT`, not as `KeyNotFound`.
pub(super) fn removed(
    result: Result<(), MapError>,
    name: &'static str,
    what: impl FnOnce() -> String,
) -> Result<(), DatapathError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(source) => Err(DatapathError::Remove {
            name,
            what: what(),
            source,
        }),
    }
}

/// The trie keys an entry occupies in `generation` for `endpoint`.
pub fn policy_keys(
    endpoint: u32,
    generation: u8,
    e: &PolicyEntry,
) -> impl Iterator<Item = Key<PolicyKey>> + use<> {
    let base = PolicyKey {
        endpoint,
        peer: e.peer,
        direction: e.direction as u8,
        generation,
        ..PolicyKey::default()
    };
    // Any protocol: one key; else the port range's blocks.
    let any = e
        .protocol
        .is_none()
        .then(|| Key::new(POLICY_PREFIX_FIXED, base));
    let protocol = e.protocol.unwrap_or_default();
    let blocks = e
        .protocol
        .map(|_| ports::Prefixes::new(e.ports.0, e.ports.1))
        .into_iter()
        .flatten();
    any.into_iter()
        .chain(blocks.map(move |PortPrefix { base: port, bits }| {
            Key::new(
                POLICY_PREFIX_PROTO + u32::from(bits),
                PolicyKey {
                    protocol,
                    port: port.to_be_bytes(),
                    ..base
                },
            )
        }))
}

/// `value` with the sources its pod may send from: a flag and an address
/// per family that is checked (the unspecified address where the pod has
/// none in it), a flag where it has prefixes in `PAL_SRC_PREFIX`, and a
/// flag and its MAC where that is checked; the other sources' fields
/// cleared.
pub fn sourced(mut value: EndpointValue, sources: &Sources) -> EndpointValue {
    value.flags &= !endpoint_flags::SOURCES;
    value.source4 = [0; 4];
    value.source6 = [0; 16];
    if let Some(a) = sources.v4 {
        value.flags |= endpoint_flags::SOURCE4;
        value.source4 = a.octets();
    }
    if let Some(a) = sources.v6 {
        value.flags |= endpoint_flags::SOURCE6;
        value.source6 = a.octets();
    }
    if sources.prefixes {
        value.flags |= endpoint_flags::SOURCE_PREFIXES;
    }
    value.mac = [0; 6];
    if let Some(mac) = sources.mac {
        value.flags |= endpoint_flags::SOURCE_MAC;
        value.mac = mac;
    }
    value
}

/// The endpoint flags that tell the datapath which lookups can find any of
/// `entries` (`endpoint_flags::TRIE_*`, `ANY_PEER_*`); the syncer adds them
/// to the isolation flags.
pub fn lookup_flags(entries: &[PolicyEntry]) -> u32 {
    let mut flags = 0;
    for e in entries {
        let ingress = e.direction == direction::INGRESS;
        // One protocol and one port is the one entry kind the exact map
        // holds (see `policy_keys`); everything else is in the trie.
        if e.protocol.is_none() || e.ports.0 != e.ports.1 {
            flags |= if ingress {
                endpoint_flags::TRIE_INGRESS
            } else {
                endpoint_flags::TRIE_EGRESS
            };
        }
        if e.peer == identity::ANY {
            flags |= if ingress {
                endpoint_flags::ANY_PEER_INGRESS
            } else {
                endpoint_flags::ANY_PEER_EGRESS
            };
        }
    }
    flags
}

/// The policy maps' entries by (endpoint, generation), as read at one time.
/// Shared: a pass's record of what it wrote hands its entries on to the
/// next pass without a copy.
pub type HeldPolicy =
    std::collections::HashMap<(u32, u8), std::sync::Arc<Vec<(Key<PolicyKey>, PolicyValue)>>>;

/// Typed handles on the pinned datapath maps. Only the syncer writes
/// through them (tests and benchmarks aside): the fields are private so
/// that every write goes through a method that keeps the maps' invariants
/// (generations, gates, epochs).
///
/// Full-length prefixes go to the exact-match hash maps, the rest to the
/// tries; the programs look in the hash first (see ebpf-common/src/kernel/pod/policy.rs).
pub struct DatapathMaps {
    identities: AddressMap<IdentityValue>,
    endpoints: HashMap<MapData, u32, EndpointValue>,
    /// The programs' index of `endpoints` by interface slot; see
    /// [`Self::index_endpoint`].
    slots: Array<MapData, EndpointSlot>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    policy_port: HashMap<MapData, PolicyKey, PolicyValue>,
    pub(super) node_denies: AddressMap<u32>,
    pub(super) xdp_pod_deny: HashMap<MapData, XdpPodDenyKey, u32>,
    pub(super) xdp_pod_dst: HashMap<MapData, [u8; ADDR_LEN], u32>,
    pub(super) source_prefixes: LpmTrie<MapData, SourcePrefixKey, u32>,
    pub(super) node_addresses: HashMap<MapData, [u8; ADDR_LEN], u32>,
    /// Bumped after every change that can change the verdict for a tracked
    /// flow (see `maps::EPOCH`).
    epoch: Array<MapData, u32>,
}

pub(super) fn open_map(pins: &PinDir, name: &'static str) -> Result<Map, DatapathError> {
    MapData::from_pin(pins.map(name))
        .and_then(Map::from_map_data)
        .map_err(|source| DatapathError::Open { name, source })
}

impl DatapathMaps {
    /// Opens the maps a loader pinned under `pins`.
    pub fn open(pins: &PinDir) -> Result<Self, DatapathError> {
        let conv = |name: &'static str| move |source| DatapathError::Open { name, source };
        Ok(Self {
            identities: AddressMap::open(pins, maps::IDENTITY_HOST, maps::IDENTITY)?,
            endpoints: HashMap::try_from(open_map(pins, maps::ENDPOINTS)?)
                .map_err(conv(maps::ENDPOINTS))?,
            slots: Array::try_from(open_map(pins, maps::ENDPOINT_SLOTS)?)
                .map_err(conv(maps::ENDPOINT_SLOTS))?,
            policy: LpmTrie::try_from(open_map(pins, maps::POLICY)?).map_err(conv(maps::POLICY))?,
            policy_port: HashMap::try_from(open_map(pins, maps::POLICY_PORT)?)
                .map_err(conv(maps::POLICY_PORT))?,
            node_denies: AddressMap::open(pins, maps::XDP_DENY_HOST, maps::XDP_DENY)?,
            xdp_pod_deny: HashMap::try_from(open_map(pins, maps::XDP_POD_DENY)?)
                .map_err(conv(maps::XDP_POD_DENY))?,
            xdp_pod_dst: HashMap::try_from(open_map(pins, maps::XDP_POD_DST)?)
                .map_err(conv(maps::XDP_POD_DST))?,
            source_prefixes: LpmTrie::try_from(open_map(pins, maps::SOURCE_PREFIXES)?)
                .map_err(conv(maps::SOURCE_PREFIXES))?,
            node_addresses: HashMap::try_from(open_map(pins, maps::NODE_LINK_LOCAL)?)
                .map_err(conv(maps::NODE_LINK_LOCAL))?,
            epoch: Array::try_from(open_map(pins, maps::EPOCH)?).map_err(conv(maps::EPOCH))?,
        })
    }

    /// The epoch in force.
    pub fn epoch(&self) -> Result<u32, DatapathError> {
        self.epoch.get(&0, 0).map_err(|source| DatapathError::Read {
            name: maps::EPOCH,
            source,
        })
    }

    /// Starts a new epoch: every tracked flow is judged again by the policy
    /// and identities in force at its next packet. [`Self::replace_policy`]
    /// and [`Self::remove_endpoint`] do it themselves; a caller changing
    /// identities does it once it is done.
    pub fn next_epoch(&mut self) -> Result<u32, DatapathError> {
        let current = self
            .epoch
            .get(&0, 0)
            .map_err(|source| DatapathError::Read {
                name: maps::EPOCH,
                source,
            })?;
        let next = current.wrapping_add(1);
        self.epoch
            .set(0, &next, 0)
            .map_err(|source| DatapathError::Write {
                name: maps::EPOCH,
                what: format!("epoch {next}"),
                source,
            })?;
        Ok(next)
    }

    pub fn set_identity(
        &mut self,
        addr: IpAddr,
        len: u8,
        identity: u32,
    ) -> Result<(), DatapathError> {
        self.identities.set(addr, len, IdentityValue { identity })
    }

    pub fn remove_identity(&mut self, addr: IpAddr, len: u8) -> Result<(), DatapathError> {
        self.identities.remove(addr, len)
    }

    /// Every pair's identity written, in batches (see
    /// [`AddressMap::set_all`]); the failures.
    pub fn set_identities(&mut self, pairs: &[(IpNet, u32)]) -> Vec<DatapathError> {
        let values: Vec<(IpNet, IdentityValue)> = pairs
            .iter()
            .map(|&(net, identity)| (net, IdentityValue { identity }))
            .collect();
        self.identities.set_all(&values)
    }

    /// Every prefix's identity removed, in batches; the failures.
    pub fn remove_identities(&mut self, nets: &[IpNet]) -> Vec<DatapathError> {
        self.identities.remove_all(nets)
    }

    /// The identity of every prefix the identity maps hold.
    pub fn identities(&self) -> Result<BTreeMap<IpNet, u32>, DatapathError> {
        let held = self.identities.held()?;
        Ok(held.into_iter().map(|(net, v)| (net, v.identity)).collect())
    }

    /// Every endpoint, by host-side veth ifindex.
    pub fn endpoints(&self) -> Result<BTreeMap<u32, EndpointValue>, DatapathError> {
        self.endpoints
            .iter()
            .map(|item| {
                item.map_err(|source| DatapathError::Read {
                    name: maps::ENDPOINTS,
                    source,
                })
            })
            .collect()
    }

    pub fn endpoint(&self, ifindex: u32) -> Result<Option<EndpointValue>, DatapathError> {
        match self.endpoints.get(&ifindex, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Read {
                name: maps::ENDPOINTS,
                source,
            }),
        }
    }

    /// Makes the programs' index agree with `PAL_ENDPOINTS` for the
    /// endpoint on `ifindex`, now `value` (`None`: gone): its slot gets it
    /// unless another endpoint holds that slot (that one's interface then
    /// serves from `PAL_ENDPOINTS`). Writes the copy that is not live, then
    /// flips the live one (see `EndpointSlot`), and nothing when the slot
    /// is already right. The syncer calls it for every endpoint each pass,
    /// which repairs a slot an interrupted write left behind.
    pub fn index_endpoint(
        &mut self,
        ifindex: u32,
        value: Option<EndpointValue>,
    ) -> Result<(), DatapathError> {
        let index = endpoint_slot(ifindex);
        let mut slot = self
            .slots
            .get(&index, 0)
            .map_err(|source| DatapathError::Read {
                name: maps::ENDPOINT_SLOTS,
                source,
            })?;
        let live = *slot.current();
        let want = match value {
            Some(value) => {
                let other = live.ifindex != 0 && live.ifindex != ifindex;
                if other && self.endpoint(live.ifindex)?.is_some() {
                    return Ok(());
                }
                SlotEndpoint { ifindex, value }
            }
            None if live.ifindex == ifindex => SlotEndpoint::default(),
            None => return Ok(()),
        };
        if live == want {
            return Ok(());
        }
        let next = (slot.live & 1) ^ 1;
        slot.copies[next as usize] = want;
        for step in [slot, EndpointSlot { live: next, ..slot }] {
            self.slots
                .set(index, &step, 0)
                .map_err(|source| DatapathError::Write {
                    name: maps::ENDPOINT_SLOTS,
                    what: format!("slot {index} for the endpoint on ifindex {ifindex}"),
                    source,
                })?;
        }
        Ok(())
    }

    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        // The slot first: one left behind would go on enforcing on an
        // interface that `PAL_ENDPOINTS`, and so the syncer, no longer knows.
        self.index_endpoint(ifindex, None)?;
        removed(self.endpoints.remove(&ifindex), maps::ENDPOINTS, || {
            format!("removal of endpoint on ifindex {ifindex}")
        })?;
        self.next_epoch().map(|_| ())
    }

    /// Replaces the whole policy of the endpoint on `ifindex`, atomically
    /// for packets (see the module docs), and returns the new revision.
    /// On a write failure the live generation is untouched: the endpoint
    /// keeps its last good policy and the half-written generation is
    /// removed again.
    pub fn replace_policy(
        &mut self,
        ifindex: u32,
        endpoint: u32,
        flags: u32,
        entries: &[PolicyEntry],
    ) -> Result<u32, DatapathError> {
        self.replace_policy_held(ifindex, endpoint, flags, entries, &Sources::default(), None)
    }

    /// [`Self::replace_policy`], with the policy maps' contents as the
    /// caller last read them ([`Self::held_policy`]): a syncer swapping
    /// many endpoints reads the maps once instead of scanning them again
    /// for every endpoint's old generations.
    pub fn replace_policy_held(
        &mut self,
        ifindex: u32,
        endpoint: u32,
        flags: u32,
        entries: &[PolicyEntry],
        sources: &Sources,
        held: Option<&HeldPolicy>,
    ) -> Result<u32, DatapathError> {
        let current = self.endpoint(ifindex)?;
        // The programs must read what `PAL_ENDPOINTS` says before either
        // generation is touched.
        self.index_endpoint(ifindex, current)?;
        let revision = current.map_or(0, |c| c.revision.wrapping_add(1));
        let next = sourced(
            EndpointValue {
                endpoint,
                revision,
                flags: flags | lookup_flags(entries),
                ..EndpointValue::default()
            },
            sources,
        );
        let generation = next.generation();
        // Leftovers of an interrupted earlier swap would mix into this one.
        let leftovers = self.keys_held(held, endpoint, generation)?;
        self.remove_keys(&leftovers, endpoint, generation)?;
        // The generation no packet reads yet: written in any order, so its
        // exact entries together, in one call.
        let mut keyed: Vec<(Key<PolicyKey>, PolicyValue)> = entries
            .iter()
            .flat_map(|e| policy_keys(endpoint, generation, e).map(move |k| (k, e.value)))
            .collect();
        keyed.sort_by_key(|(k, _)| !is_exact(k));
        let what = |key: &Key<PolicyKey>| {
            format!(
                "{:?}/{} of endpoint {endpoint}",
                key.data(),
                key.prefix_len()
            )
        };
        if let Err(e) = self.insert_entries(&keyed, what) {
            let keys: Vec<_> = keyed.iter().map(|(k, _)| *k).collect();
            self.remove_keys(&keys, endpoint, generation)?;
            return Err(e);
        }
        self.endpoints
            .insert(&ifindex, &next, 0)
            .map_err(|source| DatapathError::Write {
                name: maps::ENDPOINTS,
                what: format!("endpoint {endpoint} on ifindex {ifindex}"),
                source,
            })?;
        self.index_endpoint(ifindex, Some(next))?;
        // Tracked flows are judged again: by the new generation, as the
        // old one is about to go.
        self.next_epoch()?;
        // Packets now read the new generation; the old one can go. (With a
        // reused ifindex this is the previous endpoint's live generation.)
        if let Some(old) = current {
            let keys = self.keys_held(held, old.endpoint, old.generation())?;
            self.remove_keys(&keys, old.endpoint, old.generation())?;
        }
        Ok(revision)
    }

    /// Writes `add` and then removes `remove` in the endpoint's live
    /// generation, in the order given, without a swap: for the syncer's
    /// in-place patches (see `sync::endpoints`), whose order makes every
    /// state in between safe. A failure stops there; the next pass reads
    /// the maps and finishes the job.
    pub fn patch_policy(
        &mut self,
        endpoint: u32,
        generation: u8,
        add: &[(Key<PolicyKey>, PolicyValue)],
        remove: &[Key<PolicyKey>],
    ) -> Result<(), DatapathError> {
        let what = |key: &Key<PolicyKey>| {
            format!(
                "{:?}/{} of endpoint {endpoint}, in place",
                key.data(),
                key.prefix_len()
            )
        };
        self.insert_entries(add, what)?;
        self.remove_keys(remove, endpoint, generation)
    }

    /// Every policy entry the maps hold, by (endpoint, generation), in one
    /// pass over both maps.
    pub fn held_policy(&self) -> Result<HeldPolicy, DatapathError> {
        let mut out: std::collections::HashMap<(u32, u8), Vec<_>> =
            std::collections::HashMap::new();
        for (key, value) in read_whole(self.policy.map(), maps::POLICY, || self.policy.iter())? {
            let d = key.data();
            out.entry((d.endpoint, d.generation))
                .or_default()
                .push((key, value));
        }
        for (d, value) in read_whole(self.policy_port.map(), maps::POLICY_PORT, || {
            self.policy_port.iter()
        })? {
            out.entry((d.endpoint, d.generation))
                .or_default()
                .push((Key::new(POLICY_PREFIX_FULL, d), value));
        }
        Ok(out
            .into_iter()
            .map(|(at, entries)| (at, std::sync::Arc::new(entries)))
            .collect())
    }

    fn keys_held(
        &self,
        held: Option<&HeldPolicy>,
        endpoint: u32,
        generation: u8,
    ) -> Result<Vec<Key<PolicyKey>>, DatapathError> {
        match held {
            Some(held) => Ok(held
                .get(&(endpoint, generation))
                .map(|entries| entries.iter().map(|(k, _)| *k).collect())
                .unwrap_or_default()),
            None => self.policy_keys_of(endpoint, generation),
        }
    }

    /// The entries of one endpoint's generation, as trie keys (the exact
    /// ones, from the hash map, with the full prefix length).
    pub fn policy_keys_of(
        &self,
        endpoint: u32,
        generation: u8,
    ) -> Result<Vec<Key<PolicyKey>>, DatapathError> {
        let ours = |d: &PolicyKey| d.endpoint == endpoint && d.generation == generation;
        let mut keys = Vec::new();
        for key in self.policy.keys() {
            let key = key.map_err(|source| DatapathError::Read {
                name: maps::POLICY,
                source,
            })?;
            if ours(&key.data()) {
                keys.push(key);
            }
        }
        for data in self.policy_port.keys() {
            let data = data.map_err(|source| DatapathError::Read {
                name: maps::POLICY_PORT,
                source,
            })?;
            if ours(&data) {
                keys.push(Key::new(POLICY_PREFIX_FULL, data));
            }
        }
        Ok(keys)
    }

    /// Removes one generation of an endpoint's entries; `held` as for
    /// [`Self::replace_policy_held`].
    pub fn remove_generation(
        &mut self,
        endpoint: u32,
        generation: u8,
        held: Option<&HeldPolicy>,
    ) -> Result<(), DatapathError> {
        let keys = self.keys_held(held, endpoint, generation)?;
        self.remove_keys(&keys, endpoint, generation)
    }

    /// Writes `entries` in their order, each run of exact entries in one
    /// call (entry by entry where the kernel has no batch writes); a
    /// failure stops there, named by `what` of its key.
    fn insert_entries(
        &mut self,
        entries: &[(Key<PolicyKey>, PolicyValue)],
        what: impl Fn(&Key<PolicyKey>) -> String,
    ) -> Result<(), DatapathError> {
        for run in entries.chunk_by(|a, b| is_exact(&a.0) == is_exact(&b.0)) {
            if is_exact(&run[0].0) {
                let exact: Vec<(PolicyKey, PolicyValue)> =
                    run.iter().map(|(k, v)| (k.data(), *v)).collect();
                match batch::update_all(self.policy_port.map(), &exact) {
                    Ok(batch::Wrote::All) => continue,
                    Ok(batch::Wrote::Unsupported) => {}
                    Err(batch::Refused { at, error }) => {
                        return Err(DatapathError::Write {
                            name: maps::POLICY_PORT,
                            what: what(&run[at.min(run.len() - 1)].0),
                            source: batch_error("bpf_map_update_batch", error),
                        });
                    }
                }
            }
            for (key, value) in run {
                let (name, result) = if is_exact(key) {
                    (
                        maps::POLICY_PORT,
                        self.policy_port.insert(&key.data(), value, 0),
                    )
                } else {
                    (maps::POLICY, self.policy.insert(key, value, 0))
                };
                result.map_err(|source| DatapathError::Write {
                    name,
                    what: what(key),
                    source,
                })?;
            }
        }
        Ok(())
    }

    fn remove_keys(
        &mut self,
        keys: &[Key<PolicyKey>],
        endpoint: u32,
        generation: u8,
    ) -> Result<(), DatapathError> {
        let what = || format!("removal of generation {generation} of endpoint {endpoint}");
        for run in keys.chunk_by(|a, b| is_exact(a) == is_exact(b)) {
            if is_exact(&run[0]) {
                let exact: Vec<PolicyKey> = run.iter().map(Key::data).collect();
                match batch::delete_all(self.policy_port.map(), &exact) {
                    Ok(batch::Wrote::All) => continue,
                    Ok(batch::Wrote::Unsupported) => {}
                    Err(batch::Refused { error, .. }) => {
                        return Err(DatapathError::Remove {
                            name: maps::POLICY_PORT,
                            what: what(),
                            source: batch_error("bpf_map_delete_batch", error),
                        });
                    }
                }
            }
            for key in run {
                let (name, result) = if is_exact(key) {
                    (maps::POLICY_PORT, self.policy_port.remove(&key.data()))
                } else {
                    (maps::POLICY, self.policy.remove(key))
                };
                removed(result, name, what)?;
            }
        }
        Ok(())
    }
}

/// Whether `key` is an exact entry, which `PAL_POLICY_PORT` holds (the
/// rest are the trie's).
fn is_exact(key: &Key<PolicyKey>) -> bool {
    key.prefix_len() == POLICY_PREFIX_FULL
}

fn batch_error(call: &'static str, io_error: std::io::Error) -> MapError {
    aya::sys::SyscallError { call, io_error }.into()
}

/// Every entry of the map `data`: in batches where the kernel has them
/// for its type, else by `iterate` (see `batch`).
pub(crate) fn read_whole<K: aya::Pod, V: aya::Pod, I>(
    data: &MapData,
    name: &'static str,
    iterate: impl FnOnce() -> I,
) -> Result<Vec<(K, V)>, DatapathError>
where
    I: Iterator<Item = Result<(K, V), aya::maps::MapError>>,
{
    let read = |source| DatapathError::Read { name, source };
    match super::batch::read_all(data) {
        Ok(super::batch::Batched::Read(entries)) => Ok(entries),
        Ok(super::batch::Batched::Unsupported) => iterate().collect::<Result<_, _>>().map_err(read),
        Err(io_error) => Err(read(
            aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error,
            }
            .into(),
        )),
    }
}
