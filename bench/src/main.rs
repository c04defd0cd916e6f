//! Start-up and per-packet cost of what the loader loads today.
//!
//! Prints figures and ratios only; nothing here asserts on time. Needs root
//! and bpffs. Per-packet figures come from BPF_PROG_TEST_RUN on a 64-byte
//! frame; `empty` is the harness floor the datapath goal is stated against.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use palisade::{
    features::Features,
    loader::{self, objects},
    paths::PinDir,
};

const REPEAT: u32 = 1_000_000;
const LOADS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn frame() -> [u8; 64] {
    let mut f = [0u8; 64];
    f[12] = 0x08; // EtherType IPv4: the common case, even if unparsed today
    f
}

fn main() -> anyhow::Result<()> {
    let features = Features::probe();
    let base = format!("/sys/fs/bpf/palisade-bench-{}", std::process::id());
    let pins = PinDir::new(&base);

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..LOADS {
        let _ = std::fs::remove_dir_all(&base);
        let t = Instant::now();
        drop(loader::load_all(&pins, &features)?);
        cold.push(t.elapsed());
        let t = Instant::now();
        drop(loader::load_all(&pins, &features)?);
        warm.push(t.elapsed());
    }
    let mut loaded = loader::load_all(&pins, &features)?;
    let data = frame();
    let opts = || TestRunOptions {
        data_in: Some(&data),
        repeat: REPEAT,
        ..TestRunOptions::new()
    };
    let xdp: &mut Xdp = loaded
        .xdp
        .ebpf
        .program_mut(objects::XDP.programs[0])
        .context("xdp program")?
        .try_into()?;
    let xdp_ns = xdp.test_run(opts())?.duration.as_nanos();
    let tc: &mut SchedClassifier = loaded
        .tc
        .ebpf
        .program_mut(objects::TC.programs[0])
        .context("tc program")?
        .try_into()?;
    let tc_ns = tc.test_run(opts())?.duration.as_nanos();
    drop(loaded);
    std::fs::remove_dir_all(&base).with_context(|| format!("removing {base}"))?;

    println!("load_all (verifier + pins), median of {LOADS}:");
    println!(
        "  fresh pins:   {:>8.1} ms",
        median(cold).as_secs_f64() * 1e3
    );
    println!(
        "  adopt pins:   {:>8.1} ms",
        median(warm).as_secs_f64() * 1e3
    );
    println!("BPF_PROG_TEST_RUN, 64-byte frame, repeat {REPEAT}:");
    println!("  xdp prefilter (counter only): {xdp_ns:>4} ns/packet");
    println!("  tc from-pod (counter only):   {tc_ns:>4} ns/packet");
    println!(
        "  ratio tc/xdp:                 {:.2}",
        tc_ns as f64 / xdp_ns.max(1) as f64
    );
    Ok(())
}
