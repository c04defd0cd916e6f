//! The per-pod datapath, shared by the TC programs and the optional XDP
//! program on a pod's host-side veth: one implementation of parsing,
//! identities, policy, conntrack, counters and events, whatever the hook.
//! Compiled only with the `pod-datapath` feature, so objects that do not
//! enforce pod policy (the LSM one) carry none of its maps.

pub mod conntrack;
pub mod events;
pub mod flow;
pub mod maps;
pub mod policy;
pub mod scratch;

use maps::{PAL_COUNTERS, PAL_ENDPOINTS, PAL_TC_STATS};
use policy::Verdict;

use crate::{
    datapath::CounterKey,
    kernel::{
        count, count_detail,
        parse::{Parsed, parse},
    },
    reason,
};

/// Judges one frame at the endpoint on `ifindex`, in `dir` (the pod's
/// ingress or egress), counts it, reports drops and audits, and returns
/// whether it may pass. Interfaces that are not endpoints pass.
#[inline(always)]
pub fn enforce(data: usize, data_end: usize, ifindex: u32, bytes: u64, dir: u32) -> bool {
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { PAL_ENDPOINTS.get(&ifindex) }).copied() else {
        count(&PAL_TC_STATS, dir, reason::PASS_NO_ENDPOINT, bytes);
        return true;
    };
    let Some(s) = scratch::get() else {
        // Cannot happen (a one-slot array always has slot 0); fail open
        // with a count rather than drop traffic Palisade cannot judge.
        count(&PAL_TC_STATS, dir, reason::PASS_NO_ENDPOINT, bytes);
        return true;
    };
    let parsed = parse(data, data_end, &mut s.pkt);
    let parsed_ip = matches!(parsed, Parsed::Ip);
    let verdict = match parsed {
        Parsed::Ip => flow::decide(&ep, dir, s),
        Parsed::Pass(why) => Verdict::pass(why, 0),
        Parsed::Drop(why) => Verdict::drop(why, 0),
    };
    if !verdict.pass || verdict.reason == reason::AUDIT_WOULD_DROP {
        events::report(s, ep.endpoint, dir, &verdict, parsed_ip);
    }
    count(&PAL_TC_STATS, dir, verdict.reason, bytes);
    let key = CounterKey {
        endpoint: ep.endpoint,
        policy: verdict.policy,
        reason: verdict.reason as u16,
        direction: dir as u8,
        _pad: 0,
    };
    count_detail(&PAL_COUNTERS, &PAL_TC_STATS, &key, bytes);
    verdict.pass
}
