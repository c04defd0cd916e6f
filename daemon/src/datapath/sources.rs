//! `PAL_SRC_PREFIX`: the prefixes a pod may send from besides the address
//! its endpoint holds (its further addresses, its extra prefixes), by
//! endpoint. The programs read it only for a packet whose
//! source is not the address its endpoint holds, from an endpoint flagged
//! `SOURCE_PREFIXES`
//! (`ebpf_common::kernel::pod::maps`): for such an endpoint an entry counts
//! from the moment it is written, and stops when it is removed.

use std::{collections::BTreeSet, net::IpAddr};

use aya::maps::{IterableMap as _, lpm_trie::Key};
use ebpf_common::{
    datapath::{ADDR_LEN, SOURCE_PREFIX_FIXED, SourcePrefixKey},
    maps,
};
use ipnet::IpNet;

use super::maps::{DatapathError, DatapathMaps, read_whole, removed};

/// The key of `net` for `endpoint`.
pub fn source_prefix_key(endpoint: u32, net: IpNet) -> Key<SourcePrefixKey> {
    let mut addr = [0; ADDR_LEN];
    let family = match net.addr() {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            addr = a.octets();
            6
        }
    };
    Key::new(
        SOURCE_PREFIX_FIXED + u32::from(net.prefix_len()),
        SourcePrefixKey {
            endpoint,
            family,
            addr,
        },
    )
}

/// What a key says, if it is one [`source_prefix_key`] makes.
fn of_key(key: &Key<SourcePrefixKey>) -> Option<(u32, IpNet)> {
    let d = key.data();
    let len = u8::try_from(key.prefix_len().checked_sub(SOURCE_PREFIX_FIXED)?).ok()?;
    let addr = match d.family {
        4 => IpAddr::from([d.addr[0], d.addr[1], d.addr[2], d.addr[3]]),
        6 => IpAddr::from(d.addr),
        _ => return None,
    };
    Some((d.endpoint, IpNet::new(addr, len).ok()?))
}

impl DatapathMaps {
    /// Every entry the map holds; one this daemon would not write (another
    /// family number, a length past the address) as [`SourcePrefix::Foreign`],
    /// for the caller to remove.
    pub fn source_prefixes(&self) -> Result<BTreeSet<SourcePrefix>, DatapathError> {
        let entries: Vec<(Key<SourcePrefixKey>, u32)> =
            read_whole(self.source_prefixes.map(), maps::SOURCE_PREFIXES, || {
                self.source_prefixes.iter()
            })?;
        Ok(entries
            .into_iter()
            .map(|(key, _)| match of_key(&key) {
                Some((endpoint, net)) => SourcePrefix::Written(endpoint, net),
                None => SourcePrefix::Foreign(key.prefix_len(), key.data()),
            })
            .collect())
    }

    pub fn set_source_prefix(&mut self, endpoint: u32, net: IpNet) -> Result<(), DatapathError> {
        self.source_prefixes
            .insert(&source_prefix_key(endpoint, net), &1, 0)
            .map_err(|source| DatapathError::Write {
                name: maps::SOURCE_PREFIXES,
                what: format!("source prefix {net} of endpoint {endpoint}"),
                source,
            })
    }

    pub fn remove_source_prefix(&mut self, held: &SourcePrefix) -> Result<(), DatapathError> {
        let key = match *held {
            SourcePrefix::Written(endpoint, net) => source_prefix_key(endpoint, net),
            SourcePrefix::Foreign(len, data) => Key::new(len, data),
        };
        removed(
            self.source_prefixes.remove(&key),
            maps::SOURCE_PREFIXES,
            || format!("removal of {held:?}"),
        )
    }
}

/// An entry of `PAL_SRC_PREFIX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourcePrefix {
    /// (endpoint, prefix).
    Written(u32, IpNet),
    /// A key no daemon of this ABI writes: its prefix length and data.
    Foreign(u32, SourcePrefixKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_written_and_families_stay_apart() {
        for net in [
            "10.8.0.0/16",
            "192.0.2.7/32",
            "fd00:8::/64",
            "::/0",
            "0.0.0.0/0",
        ] {
            let net: IpNet = net.parse().unwrap();
            assert_eq!(of_key(&source_prefix_key(7, net)), Some((7, net)));
        }
        let any6 = source_prefix_key(7, "::/0".parse().unwrap());
        let v4 = source_prefix_key(7, "10.0.0.1/32".parse().unwrap());
        assert_eq!(any6.prefix_len(), 64, "::/0 still matches its family");
        assert_ne!(any6.data().family, v4.data().family);
    }
}
