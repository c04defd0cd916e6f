//! Connection tracking: state per flow, idle timeouts, policy revision.

use crate::{
    datapath::{CtKey, CtValue, ct_state, ct_timeout},
    kernel::parse::{
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, tcp_flags,
    },
};

/// How long an idle entry in this state stays valid.
#[inline(always)]
fn timeout(protocol: u8, state: u8) -> u64 {
    match protocol {
        IPPROTO_TCP => {
            if state & ct_state::RST != 0
                || state & (ct_state::FIN_ORIGINAL | ct_state::FIN_REPLY)
                    == (ct_state::FIN_ORIGINAL | ct_state::FIN_REPLY)
            {
                ct_timeout::TCP_CLOSING
            } else if state & ct_state::REPLY_SEEN != 0 {
                ct_timeout::TCP_ESTABLISHED
            } else {
                ct_timeout::TCP_SYN
            }
        }
        IPPROTO_UDP => ct_timeout::UDP,
        IPPROTO_SCTP => ct_timeout::SCTP,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ct_timeout::ICMP,
        _ => ct_timeout::OTHER,
    }
}

#[inline(always)]
pub fn expired(key: &CtKey, value: &CtValue, now: u64) -> bool {
    now.saturating_sub(value.last_seen_ns) > timeout(key.protocol, value.state)
}

/// Folds a packet's TCP flags into the entry's state.
#[inline(always)]
pub fn advance(value: &mut CtValue, protocol: u8, flags: u8, is_reply: bool, now: u64) {
    value.last_seen_ns = now;
    if is_reply {
        value.state |= ct_state::REPLY_SEEN;
    }
    if protocol != IPPROTO_TCP {
        return;
    }
    if flags & tcp_flags::SYN != 0 && !is_reply {
        value.state |= ct_state::SYN_SEEN;
    }
    if flags & tcp_flags::FIN != 0 {
        value.state |= if is_reply {
            ct_state::FIN_REPLY
        } else {
            ct_state::FIN_ORIGINAL
        };
    }
    if flags & tcp_flags::RST != 0 {
        value.state |= ct_state::RST;
    }
}
