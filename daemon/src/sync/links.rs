//! The TC programs on the desired endpoints' veths: attached before their
//! policy is written (a veth is never enforced with a half-written state,
//! and its endpoint entry exists before traffic is judged against it),
//! detached once nothing desired holds the veth.
//!
//! Where the kernel has TCX, a veth gets pinned TCX links: what no `tc
//! qdisc del` removes, what other TCX programs are ordered against, and
//! what the daemon can attach with no capability left. Without TCX it gets
//! clsact filters.
//!
//! A TCX link waits for an RCU grace period under the routing lock before
//! it returns (`tcx_entry_sync`): 24 ms a veth for the two, against 0.1 ms
//! for a clsact qdisc and two filters (`palisade-bench --attach`). That
//! wait would sit between a new pod and its enforcement. So by default a
//! veth new to the daemon gets filters even on a TCX kernel, added by the
//! filter helper (`loader::filter_helper`, a child that keeps
//! `CAP_NET_ADMIN` so that the daemon need not), and the daemon moves it
//! to links while idle ([`start_move`]). With `--tc-links-only`, or once
//! the helper has stopped, a new veth gets its TCX links at once, from the
//! attach thread (`linker`) while the reconcile loop goes on. A hook
//! whose link a previous daemon pinned keeps it either way: updating a
//! link's program does not wait. A `--tc-links-only` daemon that finds
//! filters an earlier daemon left (`TcAttach::leftover_filters`) removes
//! each once its veth's links are in place, through a helper started for
//! that; a filter whose removal failed leaves its veth listed as on
//! filters, and goes with the veth's next move.

use std::{
    collections::BTreeSet,
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use super::{
    Report, Syncer,
    linker::{LinkEnd, Linker},
};
use crate::{
    compile::desired::Desired,
    loader::{
        attach::{self, TcHook},
        filter_helper::{self, FilterHelper},
    },
};

/// How a veth's two TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    /// Pinned TCX links.
    Links,
    /// clsact filters, on both hooks or (a veth a daemon left half moved)
    /// on one: for good on a kernel without TCX; on one with TCX until the
    /// veth is moved to links. `since` the attach, or the last move that
    /// `failed`.
    Filters { since: Instant, failed: bool },
    /// TCX links being made on the attach thread (`linker`): nothing
    /// enforces the veth until they are.
    Linking,
}

/// Why a veth's endpoints are not in force while its links are made.
const LINKING: &str = "its TC programs' links are being made";

/// Attaches both TC programs to every desired veth that lacks them. A veth
/// whose attach failed is retried next pass; its endpoint is reported as
/// not enforced meanwhile. With `defer`, a veth with no link pinned gets
/// its TCX links from the attach thread (`linker`), and its endpoints
/// are reported not in force until they are made. Most such veths were
/// handed over by [`link_ahead`] earlier in the pass; one it could not
/// hand over is tried again here, and its error reported.
pub(super) fn attach_new(
    syncer: &mut Syncer,
    desired: &Desired<'_>,
    report: &mut Report,
    defer: bool,
) {
    for (name, placed) in &desired.endpoints {
        let ifindex = placed.ifindex;
        match syncer.attached.get(&ifindex) {
            Some(Via::Linking) => {
                report.not_enforced.insert(name.clone(), LINKING.into());
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        if defer && may_link_aside(syncer, ifindex) {
            match link_aside(syncer, ifindex) {
                Ok(true) => {
                    syncer.attached.insert(ifindex, Via::Linking);
                    report.not_enforced.insert(name.clone(), LINKING.into());
                    continue;
                }
                Ok(false) => {}
                // Attached here instead.
                Err(e) => tracing::warn!("{e}"),
            }
        }
        let helper_worked = syncer.filter_helper().is_some();
        let mut attached = attach_here(syncer, ifindex, report);
        if attached.is_err() && helper_worked && syncer.filter_helper().is_none() {
            // The helper stopped on this veth: links instead, at once,
            // rather than the veth unjudged until some later pass.
            attached = attach_here(syncer, ifindex, report);
        }
        match attached {
            Ok(via) => {
                syncer.attached.insert(ifindex, via);
            }
            Err(failed) => {
                report.attach_errors.extend(failed.iter().cloned());
                report.not_enforced.insert(name.clone(), failed.join("; "));
            }
        }
    }
}

/// Attaches both TC programs to `ifindex` in this pass: how, or what
/// failed.
fn attach_here(syncer: &mut Syncer, ifindex: u32, report: &mut Report) -> Result<Via, Vec<String>> {
    // Per hook: a pinned link is updated in place (no wait), so a veth
    // a daemon left half moved keeps the hook it had linked.
    let filters_first = syncer.filters_first();
    let linked = TcHook::ALL.map(|hook| {
        syncer.features.tcx
            && (!filters_first || attach::tc_link_pinned(&syncer.pins, ifindex, hook))
    });
    // A filter a daemon left behind a link would judge every packet
    // again: it goes once the link is in place.
    let clear_filters = syncer.tc.filters_first || syncer.tc.leftover_filters.contains(&ifindex);
    let mut failed = Vec::new();
    // A filter that stayed behind its link: the veth is kept as on
    // filters whose move failed, so the move removes it later.
    let mut filter_stayed = false;
    let helper = syncer.filter_helper.clone();
    for (hook, link) in TcHook::ALL.into_iter().zip(linked) {
        let attached = match &helper {
            Some(helper) if !link => helper.attach(ifindex, hook).map(drop),
            _ => attach::attach_tc(&mut syncer.loaded.tc, &syncer.pins, ifindex, hook, link)
                .map(drop)
                .map_err(|e| format!("attaching to ifindex {ifindex}: {e}")),
        };
        if let Err(e) = attached {
            failed.push(e);
        } else if link
            && clear_filters
            && let Err(e) = filter_off(helper.as_deref(), ifindex, hook)
        {
            filter_stayed = true;
            report.attach_errors.push(e);
        }
    }
    if !failed.is_empty() {
        return Err(failed);
    }
    Ok(if linked.iter().all(|&l| l) && !filter_stayed {
        Via::Links
    } else {
        Via::Filters {
            since: Instant::now(),
            failed: filter_stayed,
        }
    })
}

/// Hands the veths among `veths` with no programs yet to the attach
/// thread ahead of the pass that will want them (see
/// [`Syncer::link_ahead`]). What it cannot hand over is left to that
/// pass, which attaches it, or reports why not.
pub(super) fn link_ahead(syncer: &mut Syncer, veths: impl IntoIterator<Item = u32>) {
    // A take-over attaches in its own pass, links taken over in place.
    if syncer.inherited {
        return;
    }
    for ifindex in veths {
        if syncer.attached.contains_key(&ifindex) || !may_link_aside(syncer, ifindex) {
            continue;
        }
        match link_aside(syncer, ifindex) {
            Ok(true) => {
                syncer.attached.insert(ifindex, Via::Linking);
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("linking ahead: {e}"),
        }
    }
}

/// Whether a veth's TCX links may be made on the attach thread: on a TCX
/// kernel, when new veths do not get filters first, and not for a veth whose links
/// failed there (those are attached in the pass).
fn may_link_aside(syncer: &Syncer, ifindex: u32) -> bool {
    syncer.features.tcx && !syncer.filters_first() && !syncer.link_failed.contains(&ifindex)
}

/// Takes Palisade's clsact filter of `hook` off `ifindex`, through the
/// filter helper where there is one; whether there was a filter. With a
/// helper that stopped, no filter is no error; one there stays, reported.
fn filter_off(helper: Option<&FilterHelper>, ifindex: u32, hook: TcHook) -> Result<bool, String> {
    match helper {
        Some(helper) if !helper.working() => match filter_helper::filter_present(ifindex, hook) {
            Ok(false) => Ok(false),
            Ok(true) => Err(format!(
                "a clsact filter stays on ifindex {ifindex}: the filter helper that would remove it has stopped"
            )),
            Err(errno) => Err(format!(
                "looking for a clsact filter on ifindex {ifindex}: {}",
                std::io::Error::from_raw_os_error(errno)
            )),
        },
        Some(helper) => helper.detach(ifindex, hook),
        None => attach::detach_clsact_hook(ifindex, hook).map_err(|e| e.to_string()),
    }
}

/// Hands the links of `ifindex` to the attach thread, started on first
/// use. `false` where a hook's link is pinned already (updating its
/// program does not wait) or a filter left by a daemon with
/// an earlier daemon is to go with it: those are done in the pass.
fn link_aside(syncer: &mut Syncer, ifindex: u32) -> Result<bool, String> {
    if syncer.tc.leftover_filters.contains(&ifindex) {
        return Ok(false);
    }
    let mut hooks = Vec::new();
    for hook in TcHook::ALL {
        match attach::tc_link_job(&mut syncer.loaded.tc, &syncer.pins, ifindex, hook) {
            Ok(Some((prog, path))) => hooks.push((hook, prog, path)),
            Ok(None) => return Ok(false),
            Err(e) => return Err(format!("attaching to ifindex {ifindex}: {e}")),
        }
    }
    if syncer.linker.is_none() {
        let linker = Linker::start(syncer.ended.clone())
            .map_err(|e| format!("starting the TCX linker thread: {e}"))?;
        syncer.linker = Some(linker);
    }
    let linker = syncer.linker.as_mut().ok_or("no TCX linker thread")?;
    linker.submit(ifindex, hooks)?;
    Ok(true)
}

/// Takes in what was made off the loop: the move under way, once it has
/// ended (or, where its veth is to be detached, once it ends: a move is
/// one veth's, tens of milliseconds), and the veths whose links the
/// attach thread made. A veth still being linked is left to the thread
/// even where nothing holds it any more: the pass its end wakes detaches
/// it. What failed is reported by every pass until one returns a report.
pub(super) fn settle(syncer: &mut Syncer, desired: &Desired<'_>, report: &mut Report) {
    let held: BTreeSet<u32> = desired.endpoints.values().map(|p| p.ifindex).collect();
    let move_held = syncer.moving().is_some_and(|i| held.contains(&i));
    if let Some(Moved {
        end: LinkEnd::Failed(e),
        ..
    }) = finish_move(syncer, !move_held)
    {
        syncer.made_errors.push(e);
    }
    take_made(syncer);
    // A veth whose links failed on the thread is attached in the pass from
    // now on: its failure is then this pass's, retried pass after pass.
    syncer.link_failed.retain(|i| held.contains(i));
    report
        .attach_errors
        .extend(syncer.made_errors.iter().cloned());
}

/// Takes the attach thread's results since the last call into `attached`;
/// its failures go into `made_errors`. Whether there were any.
pub(super) fn take_made(syncer: &mut Syncer) -> bool {
    let Some(linker) = &mut syncer.linker else {
        return false;
    };
    let made = linker.collect();
    for (ifindex, end) in &made {
        match end {
            LinkEnd::Linked => {
                syncer.attached.insert(*ifindex, Via::Links);
            }
            LinkEnd::VethGone => {
                syncer.attached.remove(ifindex);
                tracing::debug!(ifindex, "veth gone before its TCX links were made");
            }
            LinkEnd::Failed(e) => {
                // The thread took back what it had pinned of this veth.
                syncer.attached.remove(ifindex);
                syncer.link_failed.insert(*ifindex);
                tracing::warn!("{e}");
                syncer.made_errors.push(e.clone());
            }
        }
    }
    !made.is_empty()
}

/// Whether the attach thread has links to make.
pub(super) fn linking(syncer: &Syncer) -> bool {
    syncer.linker.as_ref().is_some_and(Linker::any_pending)
}

/// Detaches from the veths no desired endpoint holds. A failure is
/// reported once and the veth forgotten: it concerns no desired endpoint,
/// and a veth that went away took its programs with it.
pub(super) fn detach_unheld(syncer: &mut Syncer, desired: &Desired<'_>, report: &mut Report) {
    let held: BTreeSet<u32> = desired.endpoints.values().map(|p| p.ifindex).collect();
    // A veth still being linked goes once the thread is done with it.
    let gone: Vec<u32> = syncer
        .attached
        .iter()
        .filter(|(i, via)| !held.contains(i) && **via != Via::Linking)
        .map(|(i, _)| i)
        .copied()
        .collect();
    for ifindex in gone {
        // Pins too for a veth on filters: a move may have linked one hook.
        if let Err(e) = attach::detach_tc(&syncer.pins, ifindex) {
            report.attach_errors.push(e.to_string());
        }
        if matches!(syncer.attached.get(&ifindex), Some(Via::Filters { .. })) {
            for hook in TcHook::ALL {
                if let Err(e) = filter_off(syncer.filter_helper.as_deref(), ifindex, hook) {
                    report.attach_errors.push(e);
                }
            }
        }
        syncer.attached.remove(&ifindex);
    }
}

/// Which veth on filters a TCX kernel would have on links moves next:
/// `due`, the longest waiting once it has waited `at_latest`, whatever
/// else happens; `when_idle`, the longest waiting of those whose last move
/// did not fail. `None` and `None` without TCX, and once the filter
/// helper has stopped.
pub(super) fn next_move(syncer: &Syncer, at_latest: Duration) -> NextMove {
    // Once the filter helper has stopped, a move would link a veth and
    // leave its filters (which this process cannot remove) judging every
    // packet a second time: veths stay on their filters instead.
    let helper_stopped = syncer.filter_helper.as_ref().is_some_and(|h| !h.working());
    if !syncer.features.tcx || helper_stopped {
        return NextMove::default();
    }
    let mut waiting: Vec<(Instant, u32, bool)> = syncer
        .attached
        .iter()
        .filter_map(|(&ifindex, via)| match via {
            Via::Filters { since, failed } => Some((*since, ifindex, *failed)),
            Via::Links | Via::Linking => None,
        })
        .collect();
    waiting.sort_unstable();
    NextMove {
        due: waiting
            .first()
            .filter(|(since, ..)| since.elapsed() >= at_latest)
            .map(|&(_, ifindex, _)| ifindex),
        when_idle: waiting
            .iter()
            .find(|(.., failed)| !failed)
            .map(|&(_, ifindex, _)| ifindex),
    }
}

/// See [`next_move`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextMove {
    pub due: Option<u32>,
    pub when_idle: Option<u32>,
}

/// A move from filters to links under way on a thread of its own
/// ([`start_move`]), which sends how it went on `done` as it ends.
pub(super) struct Moving {
    ifindex: u32,
    started: Instant,
    done: std::sync::mpsc::Receiver<LinkEnd>,
}

/// How a move that ended went: the veth, and its links.
pub struct Moved {
    pub ifindex: u32,
    pub end: LinkEnd,
}

/// Starts moving `ifindex` from filters to pinned TCX links on a thread of
/// its own, one hook at a time: the hook's link first, then its filter
/// out. Between the two an allowed packet is judged twice, by the same
/// programs on the same maps (the second run finds the flow the first
/// tracked), and counted twice; never by neither. The thread waits out
/// each link's RCU grace period under the routing lock (about 12 ms); the
/// reconcile loop goes on meanwhile, woken when the move ends, and the
/// syncer takes the move's end in [`finish_move`] before it touches that
/// veth again. `false` where a
/// move is under way already or the veth is not on filters.
pub(super) fn start_move(syncer: &mut Syncer, ifindex: u32) -> Result<bool, String> {
    if syncer.moving.is_some()
        || !matches!(syncer.attached.get(&ifindex), Some(Via::Filters { .. }))
    {
        return Ok(false);
    }
    let mut jobs = Vec::new();
    for hook in TcHook::ALL {
        // A hook a previous move linked has its link already.
        match attach::tc_link_job(&mut syncer.loaded.tc, &syncer.pins, ifindex, hook) {
            Ok(job) => jobs.push((hook, job)),
            Err(e) => {
                syncer.attached.insert(
                    ifindex,
                    Via::Filters {
                        since: Instant::now(),
                        failed: true,
                    },
                );
                return Err(format!("moving ifindex {ifindex} to TCX links: {e}"));
            }
        }
    }
    let ended = syncer.ended.clone();
    let helper = syncer.filter_helper.clone();
    let (sent, done) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("move-{ifindex}"))
        .spawn(move || {
            let moved = jobs.iter().try_for_each(|(hook, job)| {
                if let Some((prog, path)) = job {
                    attach::link_and_pin(prog.as_fd(), ifindex, *hook, path)
                        .map_err(|e| e.to_string())?;
                }
                filter_off(helper.as_deref(), ifindex, *hook).map(drop)
            });
            let moved = moved.map_err(|e| format!("moving ifindex {ifindex} to TCX links: {e}"));
            // How it went first, then the wake-up: the loop finds it.
            let _ = sent.send(LinkEnd::of(ifindex, moved));
            ended.notify_one();
        })
        .map_err(|e| format!("moving ifindex {ifindex} to TCX links: no thread: {e}"))?;
    syncer.moving = Some(Moving {
        ifindex,
        started: Instant::now(),
        done,
    });
    Ok(true)
}

/// Takes the end of the move under way, if it has ended or with `wait`:
/// the veth is on links, or, where a step failed, on its filters again (a
/// hook already linked keeps its link), to be tried again later.
pub(super) fn finish_move(syncer: &mut Syncer, wait: bool) -> Option<Moved> {
    let moving = syncer.moving.as_ref()?;
    let result = if wait {
        moving.done.recv()
    } else {
        match moving.done.try_recv() {
            Err(std::sync::mpsc::TryRecvError::Empty) => return None,
            Ok(result) => Ok(result),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(std::sync::mpsc::RecvError),
        }
    };
    let Moving {
        ifindex, started, ..
    } = syncer.moving.take()?;
    let end = result.unwrap_or_else(|_| {
        LinkEnd::Failed(format!(
            "moving ifindex {ifindex} to TCX links: the thread stopped"
        ))
    });
    match &end {
        LinkEnd::Linked => {
            syncer.attached.insert(ifindex, Via::Links);
            tracing::debug!(
                ifindex,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "moved to TCX links"
            );
        }
        LinkEnd::VethGone => {
            // A hook linked before the veth went left its pin.
            if let Err(e) = attach::detach_tc(&syncer.pins, ifindex) {
                tracing::warn!("{e}");
            }
            syncer.attached.remove(&ifindex);
            tracing::debug!(ifindex, "veth gone while moved to TCX links");
        }
        LinkEnd::Failed(_) => {
            syncer.attached.insert(
                ifindex,
                Via::Filters {
                    since: Instant::now(),
                    failed: true,
                },
            );
        }
    }
    Some(Moved { ifindex, end })
}

/// The veth a move is under way for.
pub(super) fn moving(syncer: &Syncer) -> Option<u32> {
    syncer.moving.as_ref().map(|m| m.ifindex)
}
