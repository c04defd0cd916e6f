//! The load a chaos run keeps up while faults come and go: every planned
//! cell probed over and over from its own thread, and connections held
//! open and exercised. Each outcome is judged against the cell's expected
//! verdict at once and charged to the fault in progress.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use palisade::model::Protocol;

use crate::probe::{Observed, held_state, hold, probe, still_open};

/// One cell of a planned probe table.
#[derive(Clone, Debug)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub netns: PathBuf,
    pub target: SocketAddr,
    pub protocol: Protocol,
    pub reachable: bool,
}

/// A connection to hold for the whole run.
#[derive(Clone, Debug)]
pub struct Flow {
    pub name: String,
    pub netns: PathBuf,
    pub target: SocketAddr,
    pub protocol: Protocol,
}

/// What the load saw, by phase (the fault in progress, or a calm spell).
#[derive(Default)]
pub struct Tally {
    pub probes: AtomicU64,
    phase: Mutex<String>,
    by_phase: Mutex<BTreeMap<String, PhaseTally>>,
    /// The first wrong verdicts and broken flows, with their details.
    pub wrong: Mutex<Vec<String>>,
    pub broken: Mutex<Vec<String>>,
}

#[derive(Clone, Debug, Default)]
pub struct PhaseTally {
    pub probes: u64,
    pub wrong: u64,
    pub broken: u64,
    pub seconds: f64,
}

/// For opening a held flow (the first packets also resolve neighbours).
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// How many details are kept; the counts go on.
const DETAILS: usize = 40;

impl Tally {
    pub fn set_phase(&self, name: &str) {
        *lock(&self.phase) = name.to_owned();
    }

    fn phase(&self) -> String {
        lock(&self.phase).clone()
    }

    fn record(&self, cell: &Cell, observed: &Observed) {
        self.probes.fetch_add(1, Ordering::Relaxed);
        let phase = self.phase();
        let right = matches!(
            (cell.reachable, observed),
            (true, Observed::Reachable) | (false, Observed::Blocked(_))
        );
        let mut by = lock(&self.by_phase);
        let t = by.entry(phase.clone()).or_default();
        t.probes += 1;
        if !right {
            t.wrong += 1;
            drop(by);
            let mut wrong = lock(&self.wrong);
            if wrong.len() < DETAILS {
                wrong.push(format!(
                    "{phase}: {} {} -> {} ({}): {:?}, expected {}",
                    cell.protocol,
                    cell.from,
                    cell.to,
                    cell.target,
                    observed,
                    if cell.reachable {
                        "reachable"
                    } else {
                        "blocked"
                    },
                ));
            }
        }
    }

    fn record_broken(&self, flow: &Flow, why: String, at: f64) {
        let phase = self.phase();
        lock(&self.by_phase)
            .entry(phase.clone())
            .or_default()
            .broken += 1;
        lock(&self.broken).push(format!("{phase}: held {} at {at:.1} s: {why}", flow.name));
    }

    /// Adds `seconds` of wall time to `phase`.
    pub fn spent(&self, phase: &str, seconds: f64) {
        lock(&self.by_phase)
            .entry(phase.to_owned())
            .or_default()
            .seconds += seconds;
    }

    pub fn phases(&self) -> BTreeMap<String, PhaseTally> {
        lock(&self.by_phase).clone()
    }

    pub fn wrong_count(&self) -> u64 {
        lock(&self.by_phase).values().map(|t| t.wrong).sum()
    }

    pub fn broken_count(&self) -> u64 {
        lock(&self.by_phase).values().map(|t| t.broken).sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running load; [`Load::stop`] ends it.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub tally: Arc<Tally>,
}

impl Load {
    /// Opens every flow (all must open: the run has not started), then
    /// starts a prober per cell, each waiting `interval` between probes,
    /// and one thread that exercises the flows every `held_every`.
    pub fn start(
        cells: Vec<Cell>,
        flows: Vec<Flow>,
        timeout: Duration,
        interval: Duration,
        held_every: Duration,
    ) -> anyhow::Result<Self> {
        let tally = Arc::new(Tally::default());
        tally.set_phase("calm");
        let stop = Arc::new(AtomicBool::new(false));
        let mut held = Vec::new();
        for f in flows {
            let (to, protocol) = (f.target, f.protocol);
            let socket = palisade::netns::in_netns(&f.netns, || hold(to, protocol, OPEN_TIMEOUT))?
                .map_err(|e| anyhow::anyhow!("opening held flow {}: {e}", f.name))?;
            held.push((f, socket));
        }
        let mut threads = Vec::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let (stop, tally) = (stop.clone(), tally.clone());
            // Spread the first probes over one interval: the cells do not
            // fire in step.
            let offset = interval.mul_f64((i % 17) as f64 / 17.0);
            threads.push(std::thread::spawn(move || {
                let path = cell.netns.clone();
                let run = || {
                    std::thread::sleep(offset);
                    while !stop.load(Ordering::Relaxed) {
                        let (observed, _) = probe(cell.target, cell.protocol, timeout);
                        if !stop.load(Ordering::Relaxed) {
                            tally.record(&cell, &observed);
                        }
                        std::thread::sleep(interval);
                    }
                };
                if let Err(e) = palisade::netns::in_netns(&path, run) {
                    eprintln!("chaos: prober {} -> {}: {e}", cell.from, cell.to);
                }
            }));
        }
        {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(std::thread::spawn(move || {
                exercise(&mut held, &stop, &tally, timeout, held_every);
            }));
        }
        Ok(Self {
            stop,
            threads,
            tally,
        })
    }

    pub fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.tally
    }
}

/// Sends a request on every held flow and waits for its reply, again and
/// again; a flow that fails once is broken for good and left alone.
fn exercise(
    held: &mut Vec<(Flow, socket2::Socket)>,
    stop: &AtomicBool,
    tally: &Tally,
    timeout: Duration,
    every: Duration,
) {
    let began = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        held.retain(|(flow, socket)| match still_open(socket, timeout) {
            Ok(()) => true,
            // The run ended while it waited: nothing to judge.
            Err(_) if stop.load(Ordering::Relaxed) => true,
            Err(e) => {
                let at = began.elapsed().as_secs_f64();
                tally.record_broken(flow, format!("{} ({e})", held_state(&e)), at);
                false
            }
        });
        std::thread::sleep(every.saturating_sub(start.elapsed()));
    }
}
