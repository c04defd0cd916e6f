//! The `palisade` command.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, anyhow};
use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use palisade::{
    features::Features,
    loader::{
        self, LsmObject,
        attach::{self, LinkState, TcHook},
        sizes::MapSizes,
    },
    netns::ifindex,
    paths::{self, PinDir},
    status::Status,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "eBPF policy enforcement for Kubernetes nodes"
)]
struct Cli {
    /// Base directory for pins on bpffs; the ABI version directory goes beneath it.
    #[arg(long, global = true, default_value = paths::DEFAULT_PIN_BASE)]
    pin_base: PathBuf,
    /// Size of a map, e.g. PAL_CT4=262144 (repeatable). A pinned map of
    /// another size is refused: `unload --maps` first to resize.
    #[arg(long = "map-size", global = true, value_name = "NAME=ENTRIES")]
    map_size: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe kernel features and show what is pinned, with counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Load all programs (LSM only where BPF LSM is active), pin their maps,
    /// attach to the given interfaces and pin the links. Enforcement stays
    /// in place after this command exits.
    Load {
        /// Interface for the XDP prefilter (repeatable).
        #[arg(long = "xdp", value_name = "IFACE")]
        xdp: Vec<String>,
        /// Pod host-side veth for both TC programs (repeatable).
        #[arg(long = "tc", value_name = "IFACE")]
        tc: Vec<String>,
        /// Pod host-side veth for the optional XDP egress hook plus the TC
        /// ingress hook (repeatable). TC is the default: see README.
        #[arg(long = "xdp-pod", value_name = "IFACE")]
        xdp_pod: Vec<String>,
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        xdp_mode: Mode,
        /// Network namespace the interfaces live in (e.g. /run/netns/node);
        /// pins stay on this process's bpffs.
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
    },
    /// Explain why a flow would be allowed or denied, from a scenario file's
    /// namespaces, pods and policies.
    Explain {
        /// A scenario file (shared/SCENARIOS.md format); without one, ask
        /// the running daemon at --addr what it enforces now.
        file: Option<PathBuf>,
        /// The daemon's --metrics-addr (without FILE).
        #[arg(long, default_value = "127.0.0.1:9963")]
        addr: std::net::SocketAddr,
        /// Reach the daemon from inside this network namespace.
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
        /// Source: namespace/pod, or an address.
        #[arg(long)]
        from: String,
        /// Destination: namespace/pod, or an address.
        #[arg(long)]
        to: String,
        /// A port number, or a port name resolved on the destination pod.
        #[arg(long)]
        port: String,
        #[arg(long, default_value = "TCP")]
        protocol: String,
    },
    /// Run the node daemon: load (or adopt) the programs, then keep the maps
    /// in step with the source, attaching to each local pod's veth. Run it in
    /// the node's network namespace. Enforcement outlives it.
    Daemon {
        /// A directory of YAML files (Namespaces, Pods, policies), watched.
        #[arg(long, value_name = "DIR")]
        source: PathBuf,
        /// Where to publish the status (applied revision, readiness), as JSON.
        #[arg(long, value_name = "FILE")]
        status_file: Option<PathBuf>,
        /// Full resync period, for drift repair.
        #[arg(long, default_value_t = 2000)]
        resync_ms: u64,
        /// Also quarantine veths named with this prefix (routed CNIs, e.g.
        /// `cali`, `lxc`); bridge-port veths always are (repeatable).
        #[arg(long = "quarantine-prefix", value_name = "PREFIX")]
        quarantine_prefix: Vec<String>,
        /// Let veths of unknown pods pass traffic until their pod is known.
        #[arg(long, conflicts_with = "quarantine_prefix")]
        no_quarantine: bool,
        /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9963;
        /// port 0 picks one, named in the status file).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Label drop and allow counters by pod for at most N pods (the
        /// rest share pod="other"); off by default to bound the series.
        #[arg(long, value_name = "N")]
        metrics_pod_labels: Option<usize>,
        /// Attach the XDP prefilter to this uplink (repeatable; `auto`: the
        /// interfaces of the node's default routes): it drops the
        /// --deny-cidr sources and connection attempts to this node's pods
        /// that an explicit deny refuses whatever else applies.
        #[arg(long = "uplink", value_name = "IFACE")]
        uplinks: Vec<String>,
        /// Node-level deny list for the prefilter (repeatable): every packet
        /// from these sources is dropped on the uplinks, the node's own
        /// traffic included.
        #[arg(long = "deny-cidr", value_name = "CIDR", requires = "uplinks")]
        deny_cidrs: Vec<ipnet::IpNet>,
    },
    /// The lab: scenario files (shared/SCENARIOS.md) against the real
    /// daemon on a simulated node (needs root).
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Stream drop and audit events from a running daemon as JSON lines
    /// (like `hubble observe`); lines of type "lost" carry the kernel's
    /// counts of events the rate limit or a full ring kept back.
    Events {
        /// The daemon's --metrics-addr.
        #[arg(long, default_value = "127.0.0.1:9963")]
        addr: std::net::SocketAddr,
        /// Connect from inside this network namespace (e.g. /proc/PID/ns/net
        /// of the daemon).
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
        #[arg(long)]
        namespace: Option<String>,
        /// namespace/pod
        #[arg(long)]
        pod: Option<String>,
        /// dropped or audit
        #[arg(long)]
        verdict: Option<String>,
    },
    /// Write the CustomResourceDefinitions of Palisade's own kinds,
    /// generated from their Rust types, into a directory.
    Crds {
        #[arg(default_value = "manifests/crds")]
        dir: PathBuf,
    },
    /// Unpin all links (detaching the programs); with --maps also remove the
    /// pinned maps, losing their counters and state.
    Unload {
        #[arg(long)]
        maps: bool,
        /// Also remove Palisade's clsact filters from these interfaces
        /// (kernels without TCX, where TC attachments are not pinned).
        #[arg(long = "tc", value_name = "IFACE")]
        tc: Vec<String>,
        /// Network namespace of the --tc interfaces.
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Run scenario files. Exit status: 0 all matched, 1 a mismatch (or the
    /// run failed), 2 invalid input, 3 something skipped.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON document with every report, instead of tables.
        #[arg(long)]
        json: bool,
        /// Per probe attempt; a failing cell is tried twice.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Print the daemon's drop and audit counters after each scenario.
        #[arg(long)]
        metrics: bool,
    },
    /// The standard model before and after a directory of policies, with
    /// the compiler's prediction as the expected tables, and why one denied
    /// flow is denied.
    Demo {
        #[arg(long, default_value = "manifests/examples/policies")]
        policies: PathBuf,
        /// Also write the generated scenario file here.
        #[arg(long)]
        save: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Native,
    Generic,
}

impl From<Mode> for XdpMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => XdpMode::Default,
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        }
    }
}

fn describe(what: &str, iface: &str, state: &LinkState) {
    match state {
        LinkState::Pinned { path, replaced } => println!(
            "{what} on {iface}: {} link pinned at {}",
            if *replaced {
                "replaced program in existing"
            } else {
                "new"
            },
            path.display()
        ),
        LinkState::Filter { replaced } => println!(
            "{what} on {iface}: {} clsact filter (prio {}, handle {:#x}); kept by the qdisc",
            if *replaced {
                "replaced program in existing"
            } else {
                "new"
            },
            attach::CLSACT_PRIORITY,
            attach::CLSACT_HANDLE
        ),
    }
}

/// Runs `f` in `netns` when one is given, here otherwise.
fn maybe_in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    match netns {
        Some(path) => palisade::netns::in_netns(path, f)?,
        None => f(),
    }
}

/// Where `load` attaches.
struct Targets {
    xdp: Vec<String>,
    tc: Vec<String>,
    xdp_pod: Vec<String>,
    mode: Mode,
}

fn load(
    pins: &PinDir,
    sizes: &MapSizes,
    targets: &Targets,
    netns: Option<&Path>,
) -> anyhow::Result<()> {
    let features = Features::probe();
    for line in features.lines() {
        tracing::info!("{line}");
    }
    let mut loaded = loader::load_with(pins, &features, sizes)?;
    for (name, m) in [("xdp", &loaded.xdp.maps), ("tc", &loaded.tc.maps)] {
        for outcome in m {
            println!("{name}: map {} {:?}", outcome.name, outcome.pinned);
        }
    }
    match &mut loaded.lsm {
        LsmObject::Loaded(lsm) => {
            for state in attach::attach_lsm(lsm, pins)? {
                describe("lsm", "-", &state);
            }
        }
        LsmObject::Skipped { reason } => {
            println!("lsm: not loaded, no process or file enforcement: {reason}");
        }
    }
    let (xdp_object, tc_object) = (&mut loaded.xdp, &mut loaded.tc);
    maybe_in_netns(netns, || {
        for iface in &targets.xdp {
            let state = attach::attach_xdp(xdp_object, pins, ifindex(iface)?, targets.mode.into())?;
            describe("xdp", iface, &state);
        }
        for iface in &targets.xdp_pod {
            let index = ifindex(iface)?;
            let state = attach::attach_xdp_from_pod(xdp_object, pins, index, targets.mode.into())?;
            describe("xdp FromPod", iface, &state);
            let state = attach::attach_tc(tc_object, pins, index, TcHook::ToPod, features.tcx)?;
            describe("tc ToPod", iface, &state);
        }
        for iface in &targets.tc {
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                let state =
                    attach::attach_tc(tc_object, pins, ifindex(iface)?, hook, features.tcx)?;
                describe(&format!("tc {hook:?}"), iface, &state);
            }
        }
        Ok(())
    })?;
    for dir in attach::retire_other_abis(pins)? {
        println!(
            "retired {}: every link of that ABI was taken over",
            dir.display()
        );
    }
    Ok(())
}

fn unload(pins: &PinDir, maps: bool, tc: &[String], netns: Option<&Path>) -> anyhow::Result<()> {
    let removed = attach::unpin_links(pins)?;
    println!("unpinned {removed} links");
    maybe_in_netns(netns, || {
        for iface in tc {
            let filters = attach::detach_clsact(ifindex(iface)?)?;
            println!("removed {filters} clsact filters from {iface}");
        }
        Ok(())
    })?;
    if maps {
        match std::fs::remove_dir_all(pins.root()) {
            Ok(()) => println!("removed {}", pins.root().display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("removing {}: {e}", pins.root().display())),
        }
    }
    Ok(())
}

fn explain(file: &Path, from: &str, to: &str, port: &str, protocol: &str) -> anyhow::Result<()> {
    use palisade::model::scenario::ScenarioFile;
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {shown}"))?;
    let snapshot = ScenarioFile::parse(&text, &shown)?.snapshot(&shown)?;
    let out = palisade::explain::explain_text(&snapshot, from, to, port, protocol)
        .map_err(|e| anyhow!("{shown}: {e}"))?;
    print!("{out}");
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let pins = PinDir::new(&cli.pin_base);
    let mut sizes = MapSizes::default();
    for arg in &cli.map_size {
        sizes.set(arg)?;
    }
    match cli.command {
        Command::Status { json } => {
            let status = Status::gather(&pins, Features::probe(), &sizes);
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        Command::Load {
            xdp,
            tc,
            xdp_pod,
            xdp_mode,
            netns,
        } => {
            let targets = Targets {
                xdp,
                tc,
                xdp_pod,
                mode: xdp_mode,
            };
            load(&pins, &sizes, &targets, netns.as_deref())
        }
        Command::Unload { maps, tc, netns } => unload(&pins, maps, &tc, netns.as_deref()),
        Command::Explain {
            file: Some(file),
            from,
            to,
            port,
            protocol,
            ..
        } => explain(&file, &from, &to, &port, &protocol),
        Command::Explain {
            file: None,
            addr,
            netns,
            from,
            to,
            port,
            protocol,
        } => {
            let q = palisade::client::query(&[
                ("from", Some(from.as_str())),
                ("to", Some(to.as_str())),
                ("port", Some(port.as_str())),
                ("protocol", Some(protocol.as_str())),
            ]);
            let mut reader =
                palisade::client::get(addr, netns.as_deref(), &format!("/explain?{q}"))?;
            let mut text = String::new();
            std::io::Read::read_to_string(&mut reader, &mut text)?;
            print!("{text}");
            Ok(())
        }
        Command::Daemon {
            source,
            status_file,
            resync_ms,
            quarantine_prefix,
            no_quarantine,
            metrics_addr,
            metrics_pod_labels,
            uplinks,
            deny_cidrs,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let uplinks = resolve_uplinks(uplinks).await?;
                let options = palisade::agent::Options {
                    status_file,
                    resync: std::time::Duration::from_millis(resync_ms),
                    quarantine: (!no_quarantine).then_some(quarantine_prefix),
                    metrics_addr,
                    metrics_pod_labels,
                    uplinks,
                    deny_cidrs,
                };
                let files = palisade::source::files::FileSource::new(&source);
                let agent = palisade::agent::Agent::start(files, pins.clone(), &sizes, options)?;
                agent.run(&source).await
            })
        }
        Command::Lab { .. } => unreachable!("main runs the lab"),
        Command::Events {
            addr,
            netns,
            namespace,
            pod,
            verdict,
        } => events(addr, netns.as_deref(), namespace, pod, verdict),
        Command::Crds { dir } => {
            std::fs::create_dir_all(&dir)?;
            for (name, text) in palisade::model::crd::crds()? {
                let path = dir.join(name);
                std::fs::write(&path, text)?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

fn events(
    addr: std::net::SocketAddr,
    netns: Option<&Path>,
    namespace: Option<String>,
    pod: Option<String>,
    verdict: Option<String>,
) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let q = palisade::client::query(&[
        ("namespace", namespace.as_deref()),
        ("pod", pod.as_deref()),
        ("verdict", verdict.as_deref()),
    ]);
    let reader = palisade::client::get(addr, netns, &format!("/events?{q}"))?;
    let stdout = std::io::stdout();
    for line in reader.lines() {
        let mut out = stdout.lock();
        writeln!(out, "{}", line?)?;
        out.flush()?;
    }
    Ok(())
}

fn lab(command: &LabCommand) -> ExitCode {
    let bin = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("palisade: own path: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (timeout_ms, show_metrics) = match command {
        LabCommand::Run {
            timeout_ms,
            metrics,
            ..
        } => (*timeout_ms, *metrics),
        LabCommand::Demo { .. } => (1000, true),
    };
    let options = palisade::lab::Options {
        bin,
        timeout: std::time::Duration::from_millis(timeout_ms),
        in_force_limit: std::time::Duration::from_secs(30),
        show_metrics,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("palisade: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        LabCommand::Run { files, json, .. } => {
            let (reports, code) =
                runtime.block_on(palisade::lab::run_files(files, &options, !json));
            if *json {
                let doc = serde_json::json!({"exit": code, "scenarios": reports});
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            ExitCode::from(code)
        }
        LabCommand::Demo { policies, save } => {
            let demo = match palisade::lab::demo::build(policies) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("palisade: {e:#}");
                    return ExitCode::from(2);
                }
            };
            if let Some(path) = save
                && let Err(e) = std::fs::write(path, &demo.scenario)
            {
                eprintln!("palisade: writing {}: {e}", path.display());
            }
            println!(
                "The policies of {} on the standard model (x, y, z; pods a, b, c).\n\
                 Step 1 probes with no policy; step 3 after applying them. The expected\n\
                 tables are the compiler's prediction, the observed ones real TCP\n\
                 connections through the kernel's programs.\n",
                policies.display()
            );
            let inputs = vec![("demo".to_owned(), Ok(demo.scenario))];
            let (_, code) = runtime.block_on(palisade::lab::run_texts(inputs, &options, true));
            if let Some(text) = demo.explained {
                println!("Why is one of those flows denied? palisade explain:\n{text}");
            }
            ExitCode::from(code)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Lab { command } = &cli.command {
        return lab(command);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--uplink` names, with `auto` replaced by the default routes' interfaces.
async fn resolve_uplinks(named: Vec<String>) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for name in named {
        if name != "auto" {
            out.push(name);
            continue;
        }
        let handle = palisade::discover::connect()?;
        let found = palisade::discover::default_route_links(&handle).await?;
        anyhow::ensure!(
            !found.is_empty(),
            "--uplink auto: the node has no default route"
        );
        for index in found {
            let name = palisade::netns::ifname(index)?;
            tracing::info!("--uplink auto: {name}");
            out.push(name);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
