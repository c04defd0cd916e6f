//! Palisade's own word that a blocked probe was its doing. Silence alone
//! does not say who dropped a packet, so every drop the daemon streams
//! (`GET /events?verdict=dropped`, what `palisade events` reads) is collected
//! from the start of a scenario and matched to blocked probes by protocol,
//! source address and destination. The kernel rate-limits events: a probe
//! without its event while the kernel counted events it kept back is
//! unconfirmed, not a failure.

use std::{
    io::BufRead as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use serde::Serialize;

use palisade::model::Protocol;

/// How a blocked probe's silence is accounted for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Confirmation {
    /// Palisade's drop event for this source and destination.
    Event {
        direction: String,
        reason: String,
        policy: String,
        /// The node whose daemon reported it, where the scenario has
        /// several (`nodes:`).
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// No event, but events were kept back meanwhile (by the cause named):
    /// the one for this probe may be among them.
    Unconfirmed { cause: String },
    /// No event, and none was kept back: something other than Palisade
    /// dropped it.
    NoEvent,
}

struct Dropped {
    protocol: String,
    src: SocketAddr,
    dst: SocketAddr,
    event: Confirmation,
}

#[derive(Default)]
struct Collected {
    drops: Vec<Dropped>,
    /// Events the daemon skipped because this reader fell behind.
    lagged: u64,
}

/// Events kept back so far, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    rate_limited: u64,
    ring_full: u64,
    lagged: u64,
}

impl Losses {
    /// What kept events back since `before`, if anything did.
    fn since(self, before: Self) -> Option<String> {
        let causes: Vec<String> = [
            (self.rate_limited, before.rate_limited, "rate-limited"),
            (self.ring_full, before.ring_full, "lost to a full ring"),
            (self.lagged, before.lagged, "skipped by a slow reader"),
        ]
        .into_iter()
        .filter(|(now, then, _)| now > then)
        .map(|(now, then, cause)| format!("{} events {cause}", now - then))
        .collect();
        (!causes.is_empty()).then(|| causes.join(", "))
    }
}

/// What the threads reading daemons' drop events have seen. A thread ends
/// when its daemon closes the stream, as it does when it stops.
#[derive(Default)]
pub struct DropWatch {
    collected: Arc<Mutex<Collected>>,
}

/// A blocked probe to account for.
pub struct Silent<'a> {
    pub from: &'a [IpAddr],
    pub to: SocketAddr,
}

/// One line of a daemon's event stream; `node` names the daemon's node.
fn parse(line: &str, collected: &Mutex<Collected>, node: Option<&str>) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let mut c = collected.lock().unwrap_or_else(PoisonError::into_inner);
    match v["type"].as_str() {
        Some("event") => {
            // Events without ports (ICMP, unparsed) match no probe.
            let (Ok(src), Ok(dst)) = (text("src").parse(), text("dst").parse()) else {
                return;
            };
            c.drops.push(Dropped {
                protocol: text("protocol"),
                src,
                dst,
                event: Confirmation::Event {
                    direction: text("direction"),
                    reason: text("reason"),
                    policy: text("policy"),
                    node: node.map(str::to_owned),
                },
            });
        }
        Some("skipped") => c.lagged += v["events"].as_u64().unwrap_or(0),
        _ => {}
    }
}

impl DropWatch {
    /// Reads the drops of the daemon at `metrics` (its local endpoint),
    /// which listens inside the network namespace at `netns`, from the
    /// moment this returns, into the collection of every daemon's; `node`
    /// names the daemon's node where there are several (a drop is reported
    /// by the node that enforced it).
    pub fn subscribe(
        &self,
        metrics: SocketAddr,
        netns: &Path,
        node: Option<String>,
    ) -> anyhow::Result<()> {
        let into = self.collected.clone();
        let netns = netns.to_owned();
        let (subscribed, answer) = mpsc::channel();
        // The client blocks (and may run a runtime of its own): a thread,
        // not the lab's runtime.
        std::thread::spawn(move || {
            let path = "/events?verdict=dropped";
            let reader = match palisade::observe::client::get(metrics, Some(&netns), path) {
                Ok(reader) => reader,
                Err(e) => {
                    let _ = subscribed.send(Err(e));
                    return;
                }
            };
            let _ = subscribed.send(Ok(()));
            for line in reader.lines() {
                let Ok(line) = line else { return };
                parse(&line, &into, node.as_deref());
            }
        });
        answer
            .recv()
            .context("the event reader ended before it subscribed")??;
        Ok(())
    }

    fn collected(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Where a probe's drops begin: what was seen before is not its own.
    pub fn mark(&self) -> usize {
        self.collected().drops.len()
    }

    /// The losses so far, from the daemons' metrics (the kernel's loss
    /// counters, summed at each scrape; several daemons' texts one after
    /// the other add up) and these readers' own.
    pub fn losses(&self, metrics: &str) -> Losses {
        let value = |cause: &str| {
            let series = format!("palisade_events_lost_total{{cause=\"{cause}\"}}");
            metrics
                .lines()
                .filter_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Losses {
            rate_limited: value("rate_limited"),
            ring_full: value("ring_full"),
            lagged: self.collected().lagged,
        }
    }

    /// The drop event since `since` for this probe, in either direction
    /// (the request on its way, or a reply on its way back).
    fn find(&self, since: usize, protocol: Protocol, probe: &Silent) -> Option<Confirmation> {
        let protocol = protocol.to_string();
        let c = self.collected();
        c.drops.get(since..)?.iter().find_map(|d| {
            let request = probe.from.contains(&d.src.ip()) && d.dst == probe.to;
            let reply = d.src == probe.to && probe.from.contains(&d.dst.ip());
            (d.protocol == protocol && (request || reply)).then(|| d.event.clone())
        })
    }

    /// Accounts for every silent probe since `since` (when `before` was
    /// taken): its event, waited for up to `limit` (events arrive within
    /// milliseconds of the drop), or else whether events were lost
    /// meanwhile, from a final `scrape` of the metrics.
    pub async fn account(
        &self,
        since: usize,
        before: Losses,
        protocol: Protocol,
        probes: &[Silent<'_>],
        limit: Duration,
        scrape: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<Vec<Confirmation>> {
        let deadline = Instant::now() + limit;
        let found = loop {
            let found: Vec<Option<Confirmation>> = probes
                .iter()
                .map(|p| self.find(since, protocol, p))
                .collect();
            if found.iter().all(Option::is_some) || Instant::now() >= deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let lost = if found.iter().any(Option::is_none) {
            self.losses(&scrape()?).since(before)
        } else {
            None
        };
        Ok(found
            .into_iter()
            .map(|f| {
                f.unwrap_or_else(|| match &lost {
                    Some(cause) => Confirmation::Unconfirmed {
                        cause: cause.clone(),
                    },
                    None => Confirmation::NoEvent,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"type":"event","time":"t","verdict":"dropped","direction":"ingress","reason":"drop_policy_deny","policy":"palisade:x/deny","pod":"x/a","protocol":"UDP","src":"10.244.0.5:40000","dst":"10.244.0.1:81"}"#;

    fn watch() -> DropWatch {
        DropWatch::default()
    }

    #[test]
    fn drops_match_by_protocol_source_and_destination_either_way() -> anyhow::Result<()> {
        let w = watch();
        parse(EVENT, &w.collected, None);
        parse(r#"{"type":"lost","rate_limited":0}"#, &w.collected, None);
        let from = ["10.244.0.5".parse()?];
        let to: SocketAddr = "10.244.0.1:81".parse()?;
        let probe = Silent { from: &from, to };
        assert!(matches!(
            w.find(0, Protocol::Udp, &probe),
            Some(Confirmation::Event { ref policy, .. }) if policy == "palisade:x/deny"
        ));
        assert_eq!(w.find(0, Protocol::Tcp, &probe), None);
        assert_eq!(
            w.find(1, Protocol::Udp, &probe),
            None,
            "seen before the mark"
        );
        let other = ["10.244.0.6".parse()?];
        let elsewhere = Silent { from: &other, to };
        assert_eq!(w.find(0, Protocol::Udp, &elsewhere), None);
        // A reply dropped on its way back names the probe reversed.
        let back = [to.ip()];
        let reply = Silent {
            from: &back,
            to: "10.244.0.5:40000".parse()?,
        };
        assert!(w.find(0, Protocol::Udp, &reply).is_some());
        Ok(())
    }

    #[test]
    fn a_missing_event_is_unconfirmed_only_when_events_were_lost() -> anyhow::Result<()> {
        let w = watch();
        let metrics = |rate_limited: u64| {
            format!(
                "palisade_events_lost_total{{cause=\"ring_full\"}} 0\npalisade_events_lost_total{{cause=\"rate_limited\"}} {rate_limited}\n"
            )
        };
        let before = w.losses(&metrics(4));
        let from = ["10.244.0.5".parse()?];
        let probes = [Silent {
            from: &from,
            to: "10.244.0.1:81".parse()?,
        }];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let account = |after: u64| {
            rt.block_on(
                w.account(0, before, Protocol::Udp, &probes, Duration::ZERO, || {
                    Ok(metrics(after))
                }),
            )
        };
        assert_eq!(account(4)?, [Confirmation::NoEvent]);
        // Two daemons' texts one after the other: their losses add up.
        let two = format!("{}{}", metrics(3), metrics(2));
        assert_eq!(w.losses(&two), w.losses(&metrics(5)));
        assert_eq!(
            account(7)?,
            [Confirmation::Unconfirmed {
                cause: "3 events rate-limited".into()
            }]
        );
        parse(EVENT, &w.collected, None);
        assert!(matches!(account(7)?[..], [Confirmation::Event { .. }]));
        Ok(())
    }
}
