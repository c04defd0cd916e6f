//! A map from address prefixes to values, as the programs read it: single
//! addresses (/32, /128) in an exact-match hash map, every other prefix in
//! an LPM trie. The programs look in the hash first: a host entry costs a
//! hash lookup instead of a trie walk. The identities and the node deny
//! list are such pairs.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, IterableMap as _, LpmTrie, MapData, lpm_trie::Key};
use ebpf_common::datapath::{ADDR_LEN, ipv4_mapped, ipv4_prefix_len};
use ipnet::IpNet;

use super::{
    batch,
    maps::{DatapathError, open_map, read_whole, removed},
};
use crate::paths::PinDir;

/// The 16-byte form of an address and the matching prefix length (IPv4 as
/// `::ffff:a.b.c.d`).
pub fn addr_key(addr: IpAddr, len: u8) -> Result<Key<[u8; ADDR_LEN]>, DatapathError> {
    match addr {
        IpAddr::V4(v4) if len <= 32 => Ok(Key::new(
            ipv4_prefix_len(u32::from(len)),
            ipv4_mapped(v4.octets()),
        )),
        IpAddr::V6(v6) if len <= 128 => Ok(Key::new(u32::from(len), v6.octets())),
        _ => Err(DatapathError::Prefix { addr, len }),
    }
}

/// The prefix a 16-byte key stands for: the inverse of [`addr_key`].
pub fn net_of(key: &Key<[u8; ADDR_LEN]>) -> Option<IpNet> {
    let v6 = std::net::Ipv6Addr::from(key.data());
    let len = key.prefix_len();
    match v6.to_ipv4_mapped() {
        Some(v4) if len >= 96 => IpNet::new(IpAddr::V4(v4), (len - 96) as u8).ok(),
        _ => IpNet::new(IpAddr::V6(v6), len as u8).ok(),
    }
}

/// One exact-map-plus-trie pair, by its two pinned maps' names.
pub struct AddressMap<V> {
    host: HashMap<MapData, [u8; ADDR_LEN], V>,
    host_name: &'static str,
    trie: LpmTrie<MapData, [u8; ADDR_LEN], V>,
    trie_name: &'static str,
}

impl<V: aya::Pod + PartialEq + std::fmt::Debug> AddressMap<V> {
    /// Opens the pinned pair `host_name` (exact) and `trie_name` (prefixes).
    pub fn open(
        pins: &PinDir,
        host_name: &'static str,
        trie_name: &'static str,
    ) -> Result<Self, DatapathError> {
        let conv = |name: &'static str| move |source| DatapathError::Open { name, source };
        Ok(Self {
            host: HashMap::try_from(open_map(pins, host_name)?).map_err(conv(host_name))?,
            host_name,
            trie: LpmTrie::try_from(open_map(pins, trie_name)?).map_err(conv(trie_name))?,
            trie_name,
        })
    }

    pub fn set(&mut self, addr: IpAddr, len: u8, value: V) -> Result<(), DatapathError> {
        let key = addr_key(addr, len)?;
        let (name, result) = if key.prefix_len() == 128 {
            (self.host_name, self.host.insert(&key.data(), &value, 0))
        } else {
            (self.trie_name, self.trie.insert(&key, &value, 0))
        };
        result.map_err(|source| DatapathError::Write {
            name,
            what: format!("{addr}/{len} -> {value:?}"),
            source,
        })
    }

    /// Removes one prefix; one that is not there has been removed.
    pub fn remove(&mut self, addr: IpAddr, len: u8) -> Result<(), DatapathError> {
        let key = addr_key(addr, len)?;
        let (name, result) = if key.prefix_len() == 128 {
            (self.host_name, self.host.remove(&key.data()))
        } else {
            (self.trie_name, self.trie.remove(&key))
        };
        removed(result, name, || format!("removal of {addr}/{len}"))
    }

    /// Writes every pair: the single addresses in batches (a system call
    /// for thousands, where [`Self::set`] takes one each: a namespace
    /// relabelled moves each of its pods' identities), the other prefixes
    /// one by one. Where the kernel has no batch writes, or refuses one,
    /// the rest go one by one, so each failure is one pair's, as with
    /// `set`. Returns the failures.
    pub fn set_all(&mut self, pairs: &[(IpNet, V)]) -> Vec<DatapathError> {
        self.hosts_batched(pairs, batch::update_all, |me, net, value| {
            me.set(net.addr(), net.prefix_len(), value)
        })
    }

    /// Removes every prefix, the single addresses in batches (see
    /// [`Self::set_all`]); one that is not there has been removed. Returns
    /// the failures.
    pub fn remove_all(&mut self, nets: &[IpNet]) -> Vec<DatapathError> {
        let items: Vec<(IpNet, ())> = nets.iter().map(|&net| (net, ())).collect();
        let delete = |map: &MapData, entries: &[([u8; ADDR_LEN], ())]| {
            let keys: Vec<[u8; ADDR_LEN]> = entries.iter().map(|&(k, ())| k).collect();
            batch::delete_all(map, &keys)
        };
        self.hosts_batched(&items, delete, |me, net, ()| {
            me.remove(net.addr(), net.prefix_len())
        })
    }

    /// [`Self::set_all`] and [`Self::remove_all`]: `batched` takes the
    /// single addresses by their host keys, `one` each other prefix, and
    /// the single addresses from wherever the batch stopped.
    fn hosts_batched<T: Copy>(
        &mut self,
        items: &[(IpNet, T)],
        batched: impl FnOnce(&MapData, &[([u8; ADDR_LEN], T)]) -> Result<batch::Wrote, batch::Refused>,
        one: impl Fn(&mut Self, IpNet, T) -> Result<(), DatapathError>,
    ) -> Vec<DatapathError> {
        let mut failed = Vec::new();
        let mut hosts: Vec<(IpNet, ([u8; ADDR_LEN], T))> = Vec::with_capacity(items.len());
        for &(net, item) in items {
            match addr_key(net.addr(), net.prefix_len()) {
                Ok(key) if key.prefix_len() == 128 => hosts.push((net, (key.data(), item))),
                Ok(_) => failed.extend(one(self, net, item).err()),
                Err(e) => failed.push(e),
            }
        }
        let entries: Vec<([u8; ADDR_LEN], T)> = hosts.iter().map(|&(_, e)| e).collect();
        let from = match batched(self.host.map(), &entries) {
            Ok(batch::Wrote::All) => entries.len(),
            Ok(batch::Wrote::Unsupported) => 0,
            // Those before it are done; it and the rest get their own
            // errors one by one.
            Err(batch::Refused { at, .. }) => at,
        };
        for &(net, (_, item)) in &hosts[from..] {
            failed.extend(one(self, net, item).err());
        }
        failed
    }

    /// Every prefix the pair holds, with its value.
    pub fn held(&self) -> Result<BTreeMap<IpNet, V>, DatapathError> {
        let mut out = BTreeMap::new();
        for (addr, v) in read_whole(self.host.map(), self.host_name, || self.host.iter())? {
            out.extend(net_of(&Key::new(128, addr)).map(|net| (net, v)));
        }
        for (key, v) in read_whole(self.trie.map(), self.trie_name, || self.trie.iter())? {
            out.extend(net_of(&key).map(|net| (net, v)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_to_prefixes() {
        for net in ["10.244.0.5/32", "192.0.2.0/24", "fd00::/64", "fd00::1/128"] {
            let net: IpNet = net.parse().unwrap();
            let key = addr_key(net.addr(), net.prefix_len()).unwrap();
            assert_eq!(net_of(&key), Some(net));
        }
    }
}
