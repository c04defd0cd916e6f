//! A second client scraping the daemon's `/metrics` while the changes run
//! (`--scrape-every MS`), as Prometheus does: a scrape reads every pinned
//! map, and a daemon that worked it out on its reconcile loop's thread
//! would hold each change arriving meanwhile. Its own scrapes are timed.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use palisade_lab::netns::Netns;

pub struct Scraper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<f64>>>,
}

impl Scraper {
    /// Scrapes `addr` from inside `node` every `every`, the first at once.
    pub fn start(node: Netns, addr: SocketAddr, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut took = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let text = node.http_get(addr, "/metrics")?;
                    anyhow::ensure!(
                        text.contains("palisade_map_entries"),
                        "a scrape without the map gauges"
                    );
                    took.push(start.elapsed().as_secs_f64() * 1e3);
                    std::thread::sleep(every.saturating_sub(start.elapsed()));
                }
                Ok(took)
            }
        });
        Self { stop, thread }
    }

    /// Stops, and gives each scrape's time (ms).
    pub fn finish(self) -> anyhow::Result<Vec<f64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the scraper panicked"))?
    }
}

/// `--scrape-every MS`, if given.
pub fn every() -> anyhow::Result<Option<Duration>> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--scrape-every") {
        None => Ok(None),
        Some(i) => {
            let ms: u64 = args
                .get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("--scrape-every needs milliseconds"))?
                .parse()?;
            anyhow::ensure!(ms > 0, "--scrape-every 0");
            Ok(Some(Duration::from_millis(ms)))
        }
    }
}
