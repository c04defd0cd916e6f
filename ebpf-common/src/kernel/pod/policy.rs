//! Policy lookup: peer identity, then the policy trie.
//!
//! Precedence (documented in README): the entry for the peer's own identity
//! wins over the any-peer entry; within one, the most specific entry wins:
//! one port, then the longest port-range prefix, then any port of the
//! protocol, then any protocol. The compiler writes final
//! verdicts into every prefix, so no further merging happens here. No entry:
//! drop if the endpoint is isolated in that direction, pass otherwise.

use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    datapath::{
        ADDR_LEN, EndpointValue, POLICY_PREFIX_FULL, PolicyKey, PolicyValue, action, direction,
        endpoint_flags, identity, policy_flags,
    },
    reason,
};

use super::{
    maps::{PAL_IDENT_HOST, PAL_IDENTITY, PAL_POLICY, PAL_POLICY_PORT},
    scratch::Lookup,
};

#[derive(Clone, Copy)]
pub struct Verdict {
    pub pass: bool,
    pub reason: u32,
    pub policy: u32,
}

impl Verdict {
    pub const fn pass(reason: u32, policy: u32) -> Self {
        Self {
            pass: true,
            reason,
            policy,
        }
    }

    pub const fn drop(reason: u32, policy: u32) -> Self {
        Self {
            pass: false,
            reason,
            policy,
        }
    }
}

/// The identity of `addr`: its own entry (a pod, a node) if it has one, else
/// the longest CIDR containing it, else WORLD. `key` is working memory.
#[inline(always)]
pub fn identity_of(addr: &[u8; ADDR_LEN], key: &mut Key<[u8; ADDR_LEN]>) -> u32 {
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { PAL_IDENT_HOST.get(addr) } {
        return v.identity;
    }
    key.prefix_len = 128;
    key.data = *addr;
    PAL_IDENTITY
        .get(key)
        .map_or(identity::WORLD, |v| v.identity)
}

/// The longest match for the key in `l`: an exact (protocol, port) entry is
/// the longest possible, so the hash answers first and the trie (ranges,
/// wildcards) only on a miss.
#[inline(always)]
fn lookup(l: &mut Lookup, trie: bool) -> Option<PolicyValue> {
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { PAL_POLICY_PORT.get(&l.exact) } {
        return Some(*v);
    }
    if !trie {
        return None;
    }
    l.policy.prefix_len = POLICY_PREFIX_FULL;
    l.policy.data = l.exact;
    PAL_POLICY.get(&l.policy).copied()
}

/// The verdict of `ep`'s policy for a new flow in `dir` with `peer`.
#[inline(always)]
pub fn evaluate(
    ep: &EndpointValue,
    dir: u32,
    peer: &[u8; ADDR_LEN],
    protocol: u8,
    port: u16,
    l: &mut Lookup,
) -> Verdict {
    let peer_identity = identity_of(peer, &mut l.addr);
    l.exact = PolicyKey {
        endpoint: ep.endpoint,
        peer: peer_identity,
        direction: dir as u8,
        generation: ep.generation(),
        _pad0: 0,
        protocol,
        port: port.to_be_bytes(),
        _pad1: [0; 2],
    };
    // The endpoint's flags say which lookups can find anything at all.
    let (trie, any_peer) = if dir == direction::INGRESS {
        (
            endpoint_flags::TRIE_INGRESS,
            endpoint_flags::ANY_PEER_INGRESS,
        )
    } else {
        (endpoint_flags::TRIE_EGRESS, endpoint_flags::ANY_PEER_EGRESS)
    };
    let trie = ep.flags & trie != 0;
    let mut entry = lookup(l, trie);
    if entry.is_none() && ep.flags & any_peer != 0 {
        l.exact.peer = identity::ANY;
        entry = lookup(l, trie);
    }
    match entry {
        Some(v) if v.action == action::ALLOW => Verdict::pass(reason::ALLOW_POLICY, v.policy),
        Some(v) if v.flags & policy_flags::AUDIT != 0 => {
            Verdict::pass(reason::AUDIT_WOULD_DROP, v.policy)
        }
        // The compiler writes an isolated endpoint's default deny as an
        // entry with no policy where a rule ordering needs one.
        Some(v) if v.policy == 0 => Verdict::drop(reason::DROP_DEFAULT_DENY, 0),
        Some(v) => Verdict::drop(reason::DROP_POLICY_DENY, v.policy),
        None => {
            let isolated = if dir == direction::INGRESS {
                endpoint_flags::ISOLATED_INGRESS
            } else {
                endpoint_flags::ISOLATED_EGRESS
            };
            if ep.flags & isolated != 0 {
                Verdict::drop(reason::DROP_DEFAULT_DENY, 0)
            } else {
                Verdict::pass(reason::PASS_UNENFORCED, 0)
            }
        }
    }
}
