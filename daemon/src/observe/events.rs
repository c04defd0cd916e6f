//! The event stream: drop and audit events from the kernel's ring buffer,
//! named (pod, policy, reason) and fanned out to `palisade events` clients,
//! like `hubble observe`. The daemon is the only reader of the ring; a
//! slow client misses events (counted) rather than slowing the reader.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Map, MapData, RingBuf};
use ebpf_common::{
    datapath::DropEvent,
    lsm::{self, LsmEvent},
    maps::{EVENTS, LSM_EVENTS, TC_STATS},
    reason,
};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::broadcast,
};

use crate::{
    observe::{
        names::{SharedNames, lock},
        stats::{self, direction_name},
    },
    paths::PinDir,
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Event {
    /// Wall-clock time, RFC 3339 with nanoseconds, UTC.
    pub time: String,
    /// `dropped` or `audit` (an audit policy would have dropped it; it passed).
    pub verdict: &'static str,
    /// `ingress` (towards the pod) or `egress` (from the pod).
    pub direction: &'static str,
    pub reason: &'static str,
    pub policy: String,
    /// `namespace/pod` of the endpoint, if known.
    pub pod: Option<String>,
    pub protocol: Option<String>,
    pub src: Option<String>,
    pub dst: Option<String>,
}

/// One line of the stream: an event, or the kernel's loss counters when
/// they change (events the rate limit or a full ring kept from user space).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Event(Event),
    /// A process or file decision (Block or Audit).
    Lsm(LsmLine),
    Lost {
        rate_limited: u64,
        ring_full: u64,
        /// The kernel's limit, per CPU.
        limit_per_second: u64,
    },
}

/// A process or file decision, as `palisade events` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LsmLine {
    pub time: String,
    /// `namespace/pod`, if the cgroup is a known pod's.
    pub pod: Option<String>,
    pub cgroup: u64,
    pub pid: u32,
    pub uid: u32,
    /// The executable of the process (`/proc/PID/exe` when the event is
    /// read; the kernel's command name if the process is gone).
    pub exe: String,
    pub path: String,
    /// The LSM hook: `bprm_check_security`, `file_open`, `path_unlink`,
    /// `path_rename`, `path_link`, `path_truncate`, `path_chmod`,
    /// `path_chown`, `path_mknod`, `path_mkdir`, `path_symlink` or
    /// `path_rmdir`.
    pub hook: &'static str,
    /// `exec`, `read`, `write`, `unlink`, `rename`, `link`, `truncate`,
    /// `chmod`, `chown` or `create`.
    pub op: &'static str,
    /// `block` or `audit`.
    pub action: &'static str,
    pub policy: String,
    /// A KubeArmorPolicy's `severity`, `message` and `tags`, where it has
    /// them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Whether the path was cut to fit the event, could not be resolved
    /// whole by the kernel, or was judged by the stricter of two verdicts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<&'static str>,
}

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub verdict: Option<String>,
    /// `event` (packets) or `lsm` (processes and files); both when unset.
    pub kind: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        let pod = e.pod.as_deref().unwrap_or("");
        self.namespace
            .as_ref()
            .is_none_or(|ns| pod.split('/').next() == Some(ns.as_str()))
            && self.pod.as_ref().is_none_or(|p| pod == p)
            && self.verdict.as_ref().is_none_or(|v| e.verdict == v)
            && self.kind.as_ref().is_none_or(|k| k == "event")
    }

    /// For a process or file decision, `verdict` is its action.
    pub fn matches_lsm(&self, e: &LsmLine) -> bool {
        let pod = e.pod.as_deref().unwrap_or("");
        self.namespace
            .as_ref()
            .is_none_or(|ns| pod.split('/').next() == Some(ns.as_str()))
            && self.pod.as_ref().is_none_or(|p| pod == p)
            && self.verdict.as_ref().is_none_or(|v| e.action == v)
            && self.kind.as_ref().is_none_or(|k| k == "lsm")
    }
}

/// Names a raw LSM event. The executable is read from `/proc` now, while
/// the process most likely still runs.
pub fn decode_lsm(e: &LsmEvent, names: &SharedNames) -> LsmLine {
    let names = lock(names);
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let exe = std::fs::read_link(format!("/proc/{}/exe", e.pid))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("[{}]", text(&e.comm)));
    let meta = names.lsm_meta(e.policy);
    let mut notes = Vec::new();
    for (flag, note) in [
        (lsm::event_flags::PATH_CUT, "path cut"),
        (lsm::event_flags::UNRESOLVED, "path unresolved"),
        (lsm::event_flags::AMBIGUOUS, "stricter verdict"),
        (lsm::event_flags::INTERLEAVED, "path may be another run's"),
    ] {
        if e.flags & flag != 0 {
            notes.push(note);
        }
    }
    LsmLine {
        time: wall_time(e.timestamp_ns),
        pod: names.pod_of_cgroup(e.cgroup).cloned(),
        cgroup: e.cgroup,
        pid: e.pid,
        uid: e.uid,
        exe,
        path: text(&e.path),
        hook: lsm::hook_name(e.hook),
        op: match e.op {
            lsm::event_op::EXEC => "exec",
            lsm::event_op::WRITE => "write",
            lsm::event_op::UNLINK => "unlink",
            lsm::event_op::RENAME => "rename",
            lsm::event_op::LINK => "link",
            lsm::event_op::TRUNCATE => "truncate",
            lsm::event_op::CHMOD => "chmod",
            lsm::event_op::CHOWN => "chown",
            lsm::event_op::CREATE => "create",
            lsm::event_op::XATTR => "xattr",
            _ => "read",
        },
        action: if e.action == lsm::action::BLOCK {
            "block"
        } else {
            "audit"
        },
        policy: names.lsm_policy(e.policy, e.flags & lsm::event_flags::DEFAULT != 0),
        severity: meta.and_then(|m| m.severity),
        message: meta.and_then(|m| m.message.clone()),
        tags: meta.map(|m| m.tags.clone()).unwrap_or_default(),
        notes,
    }
}

fn addr(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

fn endpoint(ip: IpAddr, port: u16, with_port: bool) -> String {
    match (ip, with_port) {
        (IpAddr::V6(v6), true) => format!("[{v6}]:{port}"),
        (ip, true) => format!("{ip}:{port}"),
        (ip, false) => ip.to_string(),
    }
}

/// The kernel stamps events with CLOCK_MONOTONIC_COARSE.
fn wall_time(monotonic_ns: u64) -> String {
    let now_mono = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    });
    let age = Duration::from_nanos(now_mono.saturating_sub(monotonic_ns));
    let at = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(at)
}

/// RFC 3339, UTC, nanoseconds (jiff comes with k8s-openapi).
fn rfc3339(since_epoch: Duration) -> String {
    k8s_openapi::jiff::Timestamp::try_from(UNIX_EPOCH + since_epoch)
        .map(|t| format!("{t:.9}"))
        .unwrap_or_default()
}

pub fn decode(e: &DropEvent, names: &SharedNames) -> Event {
    let names = lock(names);
    let code = u32::from(e.reason);
    let parsed = e.src != [0; 16] || e.dst != [0; 16];
    let ports = matches!(e.protocol, 6 | 17 | 132);
    let protocol = match e.protocol {
        _ if !parsed => None,
        0 if e.sport == ebpf_common::datapath::ARP_EVENT_SPORT => Some("ARP".to_owned()),
        6 => Some("TCP".to_owned()),
        17 => Some("UDP".to_owned()),
        132 => Some("SCTP".to_owned()),
        1 => Some("ICMP".to_owned()),
        58 => Some("ICMPv6".to_owned()),
        n => Some(n.to_string()),
    };
    Event {
        time: wall_time(e.timestamp_ns),
        verdict: if code == reason::AUDIT_WOULD_DROP {
            "audit"
        } else {
            "dropped"
        },
        direction: direction_name(u32::from(e.direction)),
        reason: reason::name(code),
        policy: names.policy(e.policy, code),
        pod: names.endpoint(e.endpoint).cloned(),
        protocol,
        src: parsed.then(|| endpoint(addr(e.src), e.sport, ports)),
        dst: parsed.then(|| endpoint(addr(e.dst), e.dport, ports)),
    }
}

/// Where readers subscribe.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Line>>,
}

impl Hub {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Line>> {
        self.tx.subscribe()
    }

    /// Reads the pinned ring buffer until the runtime stops, and polls the
    /// loss counters once a second.
    pub fn start(pins: &PinDir, names: SharedNames) -> anyhow::Result<Self> {
        let (tx, _) = broadcast::channel(4096);
        let hub = Self { tx };
        let packet_names = names.clone();
        hub.forward::<DropEvent>(pins, EVENTS, move |e| Line::Event(decode(e, &packet_names)))?;
        let lsm_names = names.clone();
        match hub.forward::<LsmEvent>(pins, LSM_EVENTS, move |e| {
            Line::Lsm(decode_lsm(e, &lsm_names))
        }) {
            Ok(()) => {}
            // Where BPF LSM is inactive its ring was never pinned.
            Err(e) => tracing::debug!("no process and file events: {e:#}"),
        }
        let losses = hub.tx.clone();
        let stats_path = pins.map(TC_STATS);
        tokio::spawn(async move {
            let mut last = (u64::MAX, u64::MAX);
            loop {
                if let Ok(rows) = stats::read_pinned(&stats_path) {
                    let sum = |r: &str| {
                        rows.iter()
                            .filter(|c| c.reason == r)
                            .map(|c| c.events)
                            .sum::<u64>()
                    };
                    let now = (sum("event_rate_limited"), sum("event_lost"));
                    if now != last && losses.receiver_count() > 0 {
                        last = now;
                        let _ = losses.send(Arc::new(Line::Lost {
                            rate_limited: now.0,
                            ring_full: now.1,
                            limit_per_second: ebpf_common::datapath::event_rate::PER_SECOND,
                        }));
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(hub)
    }

    /// Reads the pinned ring buffer `map` until the runtime stops, sending
    /// each record (a whole `T`) as the line `line` makes of it.
    fn forward<T: Copy + Send + 'static>(
        &self,
        pins: &PinDir,
        map: &str,
        line: impl Fn(&T) -> Line + Send + 'static,
    ) -> anyhow::Result<()> {
        let pinned = Map::RingBuf(MapData::from_pin(pins.map(map))?);
        // SAFETY: the RingBuf owns its descriptor for as long as it lives
        // and never swaps it, which is what registering requires.
        let mut ring = unsafe {
            AsyncFd::register_with_interest(RingBuf::try_from(pinned)?, Interest::READABLE)
        }
        .map_err(|e| anyhow::anyhow!("watching the ring {map}: {e}"))?;
        let events = self.tx.clone();
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = ring.readable_mut().await else {
                    return;
                };
                let inner = guard.get_inner_mut();
                while let Some(item) = inner.next() {
                    if item.len() < std::mem::size_of::<T>() {
                        continue;
                    }
                    // SAFETY: the kernel wrote a whole T (checked length;
                    // both are plain integer records); read unaligned from
                    // the ring's bytes.
                    let e: T = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    let _ = events.send(Arc::new(line(&e)));
                }
                guard.clear_ready();
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_and_filtered() {
        let names = crate::observe::names::Names::shared();
        lock(&names).learn(
            &[("palisade:x/deny".to_owned(), 77)].into(),
            &[("x/a".to_owned(), 5)].into(),
        );
        let mut raw = DropEvent {
            endpoint: 5,
            policy: 77,
            reason: reason::DROP_POLICY_DENY as u16,
            direction: 0,
            protocol: 17,
            sport: 40_000,
            dport: 81,
            ..DropEvent::default()
        };
        raw.src[10..12].copy_from_slice(&[0xff, 0xff]);
        raw.src[12..].copy_from_slice(&[10, 244, 0, 2]);
        raw.dst[10..12].copy_from_slice(&[0xff, 0xff]);
        raw.dst[12..].copy_from_slice(&[10, 244, 0, 1]);
        let e = decode(&raw, &names);
        assert_eq!(e.policy, "palisade:x/deny");
        assert_eq!(e.pod.as_deref(), Some("x/a"));
        assert_eq!(e.src.as_deref(), Some("10.244.0.2:40000"));
        assert_eq!(e.dst.as_deref(), Some("10.244.0.1:81"));
        assert_eq!(
            (e.verdict, e.direction, e.reason),
            ("dropped", "ingress", "drop_policy_deny")
        );
        let only = |ns: &str, verdict: Option<&str>| Filter {
            namespace: Some(ns.to_owned()),
            pod: None,
            verdict: verdict.map(str::to_owned),
            kind: None,
        };
        assert!(only("x", None).matches(&e));
        assert!(!only("y", None).matches(&e));
        assert!(!only("x", Some("audit")).matches(&e));
    }

    #[test]
    fn an_arp_frames_event_reads_as_arp_without_ports() {
        let names = crate::observe::names::Names::shared();
        let mut raw = DropEvent {
            reason: reason::DROP_SPOOFED_SOURCE as u16,
            direction: 1,
            sport: ebpf_common::datapath::ARP_EVENT_SPORT,
            ..DropEvent::default()
        };
        raw.src[10..].copy_from_slice(&[0xff, 0xff, 10, 244, 0, 9]);
        raw.dst[10..].copy_from_slice(&[0xff, 0xff, 10, 244, 0, 1]);
        let e = decode(&raw, &names);
        assert_eq!(e.protocol.as_deref(), Some("ARP"));
        assert_eq!(e.src.as_deref(), Some("10.244.0.9"));
        assert_eq!(e.dst.as_deref(), Some("10.244.0.1"));
        // An IP packet of protocol 0 is not ARP.
        raw.sport = 0;
        assert_eq!(decode(&raw, &names).protocol.as_deref(), Some("0"));
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(
            rfc3339(Duration::new(1_795_780_800, 5)),
            "2026-11-27T12:00:00.000000005Z"
        );
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000000000Z");
    }
}
