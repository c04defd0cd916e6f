//! `palisade-bench --lsm`: what the LSM programs cost a process, in the
//! QEMU guest (`make bench` runs it there: this machine refuses LSM
//! programs). open+close and fork+exec with no program attached, then with
//! the programs attached and two pods selected, one with 10 rules in each
//! section and one with 1,000: for a process outside every selected pod,
//! and inside each pod. The configurations are interleaved over rounds;
//! medians are reported as ratios to no program. Under TCG the absolute times mean little; the ratios are
//! what the goals are about. Also the kernel memory per rule entry.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade::{
    compile::lsm::compile_lsm,
    datapath::lsm::LsmMaps,
    loader::{self, LsmObject, attach, features::Features},
    model::{Snapshot, parse::parse_documents, standard},
    paths::PinDir,
    sync::lsm::{LsmState, cgroup2_root},
};

/// Short batches, many rounds: TCG's timing drifts within seconds, so
/// each configuration is measured next to the others again and again.
const ROUNDS: usize = 31;
const OPENS: u32 = 3_000;
const EXECS: u32 = 30;
const BIG_SET: usize = 20_000;

/// The pod cgroups, the fixture directory and the pins, removed on drop.
struct Bench {
    cgroups: Vec<PathBuf>,
    dir: PathBuf,
    pins: PinDir,
    base: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = attach::unpin_links(&self.pins);
        for c in &self.cgroups {
            let _ = fs::remove_dir(c);
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn own_cgroup() -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 membership")?;
    let root = cgroup2_root().context("no cgroup v2 mount")?;
    Ok(root.join(rel.trim_start_matches('/')))
}

fn join(cgroup: &Path) -> anyhow::Result<()> {
    fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining {}", cgroup.display()))
}

/// A policy for pod `pod` with `n` rules in each section: mostly files,
/// a tenth directories, none of which the measured operations touch.
fn policy(pod: &str, dir: &str, n: usize, sections: &[&str]) -> String {
    let mut text = format!(
        "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {{name: bench-{pod}, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: {pod}}}}}
  policyTypes: []
"
    );
    for section in sections {
        let (paths, dirs): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 10 != 9);
        let paths: Vec<String> = paths
            .iter()
            .map(|i| format!("{dir}/{section}/blocked/g{}/f{i}", i % 37))
            .collect();
        let dirs: Vec<String> = dirs
            .iter()
            .map(|i| format!("{{path: {dir}/{section}/d{i}/, recursive: true}}"))
            .collect();
        text.push_str(&format!(
            "  {section}:\n    rules:\n    - {{action: Block, paths: [{}]}}\n",
            paths.join(", ")
        ));
        if !dirs.is_empty() {
            text.push_str(&format!(
                "    - {{action: Block, dirs: [{}]}}\n",
                dirs.join(", ")
            ));
        }
    }
    text
}

fn snapshot(cgroups: &[PathBuf], policies: &[String]) -> anyhow::Result<Snapshot> {
    let mut s = standard::snapshot();
    for p in &mut s.pods {
        let p = std::sync::Arc::make_mut(p);
        p.cgroup = match p.key().as_str() {
            "x/a" => Some(cgroups[0].display().to_string()),
            "x/b" => Some(cgroups[1].display().to_string()),
            _ => None,
        };
    }
    for text in policies {
        for d in parse_documents(text, "bench.yaml", "x") {
            s.policies
                .push(d.map_err(|e| anyhow::anyhow!("{e}"))?.policy().into());
        }
    }
    Ok(s)
}

fn open_close(path: &CString, n: u32) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: a NUL-terminated path; the descriptor is closed at once.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
    t.elapsed() / n
}

fn fork_exec(program: &str, n: u32) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for _ in 0..n {
        let status = Command::new(program).arg("true").status()?;
        if !status.success() {
            bail!("{program} true: {status}");
        }
    }
    Ok(t.elapsed() / n)
}

fn slab_kib() -> anyhow::Result<u64> {
    let text = fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no Slab: in /proc/meminfo")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The configurations, in the order each round measures them.
const CONFIGS: [&str; 5] = [
    "no program",
    "an empty LSM program on each of the two hooks (the floor)",
    "programs attached, process outside every selected pod",
    "process inside a pod with 10 rules per section",
    "process inside a pod with 1,000 rules per section",
];

pub fn report() -> anyhow::Result<()> {
    let features = Features::probe();
    if let palisade::loader::features::BpfLsm::Inactive { reason } = &features.bpf_lsm {
        println!(
            "lsm bench skipped: BPF LSM is inactive here ({reason}); make bench runs it in the guest"
        );
        return Ok(());
    }
    let exe = ["/bin/busybox", "/usr/bin/true", "/bin/true"]
        .into_iter()
        .find(|p| fs::metadata(p).is_ok())
        .context("nothing to exec (busybox or true)")?;
    let id = std::process::id();
    let root = cgroup2_root().context("no cgroup v2 mount")?;
    let base = PathBuf::from(format!("/sys/fs/bpf/palisade-lsm-bench-{id}"));
    let bench = Bench {
        cgroups: vec![
            root.join(format!("palbench-a-{id}")),
            root.join(format!("palbench-b-{id}")),
        ],
        dir: PathBuf::from(format!("/tmp/palbench-{id}")),
        pins: PinDir::new(&base),
        base,
    };
    for c in &bench.cgroups {
        fs::create_dir(c).with_context(|| format!("creating {}", c.display()))?;
    }
    let dir = bench.dir.display().to_string();
    let data = bench.dir.join("data/app/config.txt");
    fs::create_dir_all(bench.dir.join("data/app"))?;
    fs::write(&data, "x\n")?;
    let data = CString::new(data.display().to_string())?;
    let home = own_cgroup()?;

    let t = Instant::now();
    let mut loaded = loader::load_all(&bench.pins, &features)?;
    println!("LSM object loaded in {:.1} s", t.elapsed().as_secs_f64());
    let LsmObject::Loaded(lsm) = &mut loaded.lsm else {
        bail!("BPF LSM is active but the loader skipped the LSM object");
    };
    let mut state = LsmState::new(LsmMaps::open(&bench.pins)?)?;
    let btf = palisade::loader::btf::Btf::from_sys_fs()?;
    let hooks = ["bpf_lsm_file_open", "bpf_lsm_bprm_check_security"]
        .into_iter()
        .map(|f| {
            btf.func_id(f)
                .with_context(|| format!("no {f} in the kernel's BTF"))
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    let both = [
        policy("a", &dir, 10, &["file", "process"]),
        policy("b", &dir, 1_000, &["file", "process"]),
    ];
    let report = state.apply(&compile_lsm(&snapshot(&bench.cgroups, &both)?))?;
    if !report.errors.is_empty() || !report.not_enforced.is_empty() {
        bail!("{:?} {:?}", report.errors, report.not_enforced);
    }

    let mut open: Vec<Vec<Duration>> = vec![Vec::new(); CONFIGS.len()];
    let mut exec: Vec<Vec<Duration>> = vec![Vec::new(); CONFIGS.len()];
    let mut measure = |k: usize| -> anyhow::Result<()> {
        open[k].push(open_close(&data, OPENS));
        exec[k].push(fork_exec(exe, EXECS)?);
        Ok(())
    };
    for _ in 0..ROUNDS {
        attach::unpin_links(&bench.pins)?;
        measure(0)?;
        let floor = hooks
            .iter()
            .map(|&id| crate::raw::empty_lsm(id))
            .collect::<Result<Vec<_>, _>>()?;
        measure(1)?;
        drop(floor);
        attach::attach_lsm(lsm, &bench.pins)?;
        measure(2)?;
        for (k, cgroup) in [(3, &bench.cgroups[0]), (4, &bench.cgroups[1])] {
            join(cgroup)?;
            let measured = measure(k);
            join(&home)?;
            measured?;
        }
    }
    attach::unpin_links(&bench.pins)?;

    let open: Vec<Duration> = open.into_iter().map(median).collect();
    let exec: Vec<Duration> = exec.into_iter().map(median).collect();
    let ratio = |v: &[Duration], k: usize| v[k].as_secs_f64() / v[0].as_secs_f64();
    println!(
        "\nLSM cost on {} (QEMU/TCG: ratios only), medians of {ROUNDS} interleaved rounds",
        features.kernel
    );
    println!("| configuration | open+close | ratio | fork+exec | ratio |");
    println!("|---|---|---|---|---|");
    for (k, name) in CONFIGS.iter().enumerate() {
        println!(
            "| {name} | {:.1} µs | {:.3} | {:.0} µs | {:.3} |",
            open[k].as_secs_f64() * 1e6,
            ratio(&open, k),
            exec[k].as_secs_f64() * 1e6,
            ratio(&exec, k)
        );
    }
    println!(
        "goals: outside a pod open <= 1.03, exec <= 1.01; inside with 1,000 rules open <= 1.05, \
         exec <= 1.03; flat from 10 to 1,000 rules"
    );

    // Kernel memory per rule entry: the slab grown by one large set.
    state.apply(&compile_lsm(&snapshot(&bench.cgroups, &[])?))?;
    let before = slab_kib()?;
    let big = policy("b", &dir, BIG_SET, &["file"]);
    let desired = compile_lsm(&snapshot(&bench.cgroups, &[big])?);
    let entries = desired.pods["x/b"]
        .file
        .as_ref()
        .map_or(0, |s| s.entries.len());
    state.apply(&desired)?;
    let after = slab_kib()?;
    state.apply(&compile_lsm(&snapshot(&bench.cgroups, &[])?))?;
    let per_rule = (after.saturating_sub(before) * 1024) as f64 / entries as f64;
    println!(
        "memory: {entries} trie entries grew the kernel's slab by {} KiB: about {per_rule:.0} bytes per rule",
        after.saturating_sub(before)
    );
    println!(
        "lsm: open floor={:.3} out={:.3} in@10={:.3} in@1000={:.3}; exec floor={:.3} out={:.3} \
         in@10={:.3} in@1000={:.3}; flat in@1000/in@10 open={:.3} exec={:.3}; bytes/rule={per_rule:.0}",
        ratio(&open, 1),
        ratio(&open, 2),
        ratio(&open, 3),
        ratio(&open, 4),
        ratio(&exec, 1),
        ratio(&exec, 2),
        ratio(&exec, 3),
        ratio(&exec, 4),
        open[4].as_secs_f64() / open[3].as_secs_f64(),
        exec[4].as_secs_f64() / exec[3].as_secs_f64()
    );
    drop(loaded);
    Ok(())
}
