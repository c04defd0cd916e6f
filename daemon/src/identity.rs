//! Numeric identities for label sets (with the named ports they come
//! with) and CIDRs.
//!
//! An identity is derived from a hash of its canonical key, so an unchanged
//! key keeps its number across restarts without any stored state.
//! Collisions are resolved by probing in the keys' sorted order, which is
//! deterministic for a given set of keys.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write},
};

use ebpf_common::datapath::identity::FIRST_ALLOCATED;
use ipnet::IpNet;

use crate::model::{Labels, NamedPort, networkpolicy::Protocol};

/// Identities are kept below 2^24: room for a flag byte if ever needed.
const SPACE: u64 = (1 << 24) - FIRST_ALLOCATED as u64;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityKey {
    /// A pod address's namespace labels (with `kubernetes.io/metadata.name`)
    /// and pod labels, and the longest ipBlock prefix containing the address
    /// (`None` when none does). The prefix is part of the key so that an
    /// ipBlock matches pod addresses exactly: two pods with the same labels
    /// on either side of a CIDR boundary differ, and so do a dual-stack
    /// pod's two addresses when a block covers only one of them.
    ///
    /// `ports`: the pod's named ports as the compiler resolves them
    /// ([`named_ports`]; empty where it has none). An egress rule's named port is resolved on each
    /// destination pod and allowed by its identity, so two pods with the
    /// same labels that number a name differently must not share one.
    Labels {
        namespace: Labels,
        pod: Labels,
        cidr: Option<IpNet>,
        ports: Vec<(String, Protocol, u16)>,
    },
    /// An ipBlock prefix (a `cidr` or an `except`).
    Cidr(IpNet),
}

impl IdentityKey {
    /// The key as text: what [`natural`] hashes.
    #[cfg(test)]
    fn canonical(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_canonical(&mut text);
        text
    }

    /// Writes [`Self::canonical`] to `out` piece by piece: [`natural`]
    /// hashes it as written, without the strings that building it took.
    /// A key vanishing makes the compiler ask every key's natural number:
    /// in a namespace relabel at 10,000 pods, building them was about 15 %
    /// of the compiler's update (`perf` of the bench's replay).
    fn write_canonical(&self, out: &mut impl Write) -> fmt::Result {
        fn join(out: &mut impl Write, l: &Labels) -> fmt::Result {
            for (i, (k, v)) in l.iter().enumerate() {
                if i > 0 {
                    out.write_char(',')?;
                }
                write!(out, "{k}={v}")?;
            }
            Ok(())
        }
        match self {
            Self::Labels {
                namespace,
                pod,
                cidr,
                ports,
            } => {
                out.write_str("labels:")?;
                join(out, namespace)?;
                out.write_char(';')?;
                join(out, pod)?;
                // Without ipBlocks around, the key (and so the id) is the
                // label sets' alone; so without named ports.
                if let Some(c) = cidr {
                    write!(out, ";{c}")?;
                }
                if !ports.is_empty() {
                    out.write_str(";ports:")?;
                    for (i, (name, protocol, port)) in ports.iter().enumerate() {
                        if i > 0 {
                            out.write_char(',')?;
                        }
                        write!(out, "{name}/{protocol}={port}")?;
                    }
                }
                Ok(())
            }
            Self::Cidr(net) => write!(out, "cidr:{net}"),
        }
    }
}

/// A pod's named ports as [`IdentityKey::Labels`] holds them: each name
/// and protocol with the port it resolves to ([`NamedPort::resolve`]),
/// sorted.
pub fn named_ports(ports: &[NamedPort]) -> Vec<(String, Protocol, u16)> {
    let mut resolved: Vec<(String, Protocol, u16)> = ports
        .iter()
        .filter_map(|p| {
            let port = NamedPort::resolve(ports, &p.name, p.protocol)?;
            Some((p.name.clone(), p.protocol, port))
        })
        .collect();
    resolved.sort_unstable();
    resolved.dedup();
    resolved
}

/// FNV-1a, 64 bit: stable across Rust versions, unlike `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_more(FNV_OFFSET, bytes)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// [`fnv1a`] carried on from `h`, the hash of what came before: of the
/// bytes before and then `bytes`.
pub fn fnv1a_more(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A stable, non-zero 32-bit number for a name (FNV-1a, 32 bit): policy
/// and endpoint ids, which counters carry across daemon restarts.
pub fn stable_id(name: &str) -> u32 {
    name.bytes()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
        .max(1)
}

/// The identity a key gets when no other key took it first.
pub fn natural(key: &IdentityKey) -> u32 {
    let mut hash = Fnv1a(FNV_OFFSET);
    // Hashing cannot fail.
    let _ = key.write_canonical(&mut hash);
    FIRST_ALLOCATED + (hash.0 % SPACE) as u32
}

/// [`fnv1a`] of what is written to it.
struct Fnv1a(u64);

impl Write for Fnv1a {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = fnv1a_more(self.0, s.as_bytes());
        Ok(())
    }
}

/// The next identity a key probes after `id` when `id` is taken.
pub fn probe_next(id: u32) -> u32 {
    FIRST_ALLOCATED + ((u64::from(id - FIRST_ALLOCATED) + 1) % SPACE) as u32
}

/// Assigns an identity to every key: its natural one, or, on a collision,
/// the next free one, in the keys' sorted order (so the result depends on
/// the set of keys only).
pub fn allocate(keys: &BTreeSet<IdentityKey>) -> BTreeMap<IdentityKey, u32> {
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for key in keys {
        let mut id = natural(key);
        while !used.insert(id) {
            id = probe_next(id);
        }
        out.insert(key.clone(), id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pod: &str) -> IdentityKey {
        IdentityKey::Labels {
            namespace: [("ns".to_owned(), "x".to_owned())].into(),
            pod: [("pod".to_owned(), pod.to_owned())].into(),
            cidr: None,
            ports: Vec::new(),
        }
    }

    #[test]
    fn a_name_resolves_to_its_first_port_as_named_port_resolve_says() {
        let port = |name: &str, port| NamedPort {
            name: name.into(),
            port,
            protocol: Protocol::Tcp,
        };
        let udp = NamedPort {
            protocol: Protocol::Udp,
            ..port("web", 53)
        };
        assert_eq!(
            named_ports(&[port("web", 80), port("admin", 9), port("web", 81), udp]),
            [
                ("admin".to_owned(), Protocol::Tcp, 9),
                ("web".to_owned(), Protocol::Tcp, 80),
                ("web".to_owned(), Protocol::Udp, 53),
            ]
        );
        // Swapped, the two same-labelled pods resolve "web" differently,
        // and so differ.
        assert_ne!(
            named_ports(&[port("web", 80), port("web", 81)]),
            named_ports(&[port("web", 81), port("web", 80)])
        );
    }

    /// Identities outlive the daemon in the pinned maps: the numbers must
    /// stay those of the text the first daemons hashed.
    #[test]
    fn natural_numbers_hash_the_same_text_as_ever() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let keys = [
            (key("a"), "labels:ns=x;pod=a"),
            (
                IdentityKey::Labels {
                    namespace: labels(&[("kubernetes.io/metadata.name", "x"), ("team", "t1")]),
                    pod: labels(&[("app", "web"), ("tier", "front")]),
                    cidr: Some("10.1.0.0/16".parse().unwrap()),
                    ports: Vec::new(),
                },
                "labels:kubernetes.io/metadata.name=x,team=t1;app=web,tier=front;10.1.0.0/16",
            ),
            (
                IdentityKey::Labels {
                    namespace: Labels::new(),
                    pod: Labels::new(),
                    cidr: None,
                    ports: Vec::new(),
                },
                "labels:;",
            ),
            (
                IdentityKey::Labels {
                    namespace: labels(&[("ns", "x")]),
                    pod: labels(&[("pod", "a")]),
                    cidr: None,
                    ports: named_ports(&[
                        NamedPort {
                            name: "web".into(),
                            port: 8080,
                            protocol: Protocol::Tcp,
                        },
                        NamedPort {
                            name: "admin".into(),
                            port: 9090,
                            protocol: Protocol::Tcp,
                        },
                    ]),
                },
                "labels:ns=x;pod=a;ports:admin/TCP=9090,web/TCP=8080",
            ),
            (
                IdentityKey::Cidr("fd00::/64".parse().unwrap()),
                "cidr:fd00::/64",
            ),
        ];
        for (k, text) in &keys {
            assert_eq!(k.canonical(), *text);
            let want = FIRST_ALLOCATED + (fnv1a(text.as_bytes()) % SPACE) as u32;
            assert_eq!(natural(k), want, "{k:?}");
        }
        // FNV-1a 64 of the text, modulo the space, past the reserved ids.
        assert_eq!(natural(&keys[0].0), 6_917_248);
    }

    #[test]
    fn identities_are_stable_and_distinct() {
        let a: BTreeSet<_> = [key("a"), key("b")].into();
        let b: BTreeSet<_> = [
            key("a"),
            key("b"),
            key("c"),
            IdentityKey::Cidr("10.0.0.0/8".parse().unwrap()),
        ]
        .into();
        let first = allocate(&a);
        let second = allocate(&b);
        assert_eq!(
            first[&key("a")],
            second[&key("a")],
            "adding a set moved another"
        );
        assert_eq!(first[&key("b")], second[&key("b")]);
        let distinct: BTreeSet<_> = second.values().collect();
        assert_eq!(distinct.len(), second.len());
        assert!(
            second
                .values()
                .all(|id| (FIRST_ALLOCATED..1 << 24).contains(id))
        );
    }
}
