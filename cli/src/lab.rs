//! `palisade lab`: scenario files against the real daemon (the
//! `palisade-lab` crate). Without the `lab` feature the command stays, hidden,
//! to say that this binary has no lab.

#[cfg(feature = "lab")]
pub use with_lab::{Args, check_helper, run};
#[cfg(not(feature = "lab"))]
pub use without_lab::{Args, check_helper, run};

#[cfg(feature = "lab")]
mod with_lab {
    use std::{
        path::{Path, PathBuf},
        process::ExitCode,
        time::Duration,
    };

    use palisade_lab::enforcer::Feed;

    #[derive(clap::Args)]
    pub struct Args {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Clone, Copy, clap::ValueEnum)]
    enum Via {
        Files,
        Kube,
    }

    impl Via {
        fn feed(self) -> Feed {
            match self {
                Self::Files => Feed::Files,
                Self::Kube => Feed::Kube,
            }
        }
    }

    #[derive(clap::Subcommand)]
    enum Command {
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
            /// Where the daemon reads the cluster from: `files` (a directory
            /// of YAML) or `kube` (the Kubernetes source, from the lab's test
            /// API server: every change becomes an API write).
            #[arg(long, value_enum, default_value = "files")]
            via: Via,
        },
        /// The daemon under faults (killed, killed mid-change, upgraded across
        /// an ABI, broken files, full maps, an event flood, API server faults)
        /// while every cell of a scenario is probed and connections are held.
        /// Ends with `chaos: <n> probes, <w> wrong verdicts, <b> held flows
        /// broken, <f> faults injected`; exit status 1 if w or b is not 0.
        Chaos {
            /// The load: a scenario on the standard model (apply, connect,
            /// probe and held steps). Default: tests/chaos/standard.yaml, built in.
            file: Option<PathBuf>,
            /// Only the faults that take seconds (what `make test` runs).
            #[arg(long)]
            short: bool,
            /// Only these faults, in this order (e.g. `--fault kill --fault abi-upgrade`).
            #[arg(long = "fault")]
            faults: Vec<String>,
            #[arg(long, value_enum, default_value = "files")]
            via: Via,
        },
        /// The chaos load for a long time while pods, namespaces and policies
        /// change without pause; samples the daemon's memory, descriptors and
        /// map entries, and writes them as CSV and an SVG plot. Exit status 1
        /// on a wrong verdict, a broken held flow, or growth (last third of
        /// the run over the first) above 25 % in memory or 10 % in fds.
        Soak {
            /// As for `chaos`.
            file: Option<PathBuf>,
            #[arg(long, default_value_t = 30.0)]
            minutes: f64,
            #[arg(long, default_value_t = 10)]
            sample_seconds: u64,
            /// Where soak.csv and soak.svg go.
            #[arg(long, default_value = "bench/results")]
            out: PathBuf,
            #[arg(long, value_enum, default_value = "files")]
            via: Via,
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

    /// The lab's check helper, when the binary was started as one
    /// (`palisade __palisade-check OP PATH`, also under another name): its
    /// exit status. It must run before anything else in `main`, which
    /// would open files of its own.
    pub fn check_helper() -> Option<ExitCode> {
        palisade_lab::helper::main().map(ExitCode::from)
    }

    pub fn run(args: &Args) -> ExitCode {
        let command = &args.command;
        let bin = match std::env::current_exe() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("palisade: own path: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (timeout_ms, show_metrics, feed) = match command {
            Command::Run {
                timeout_ms,
                metrics,
                via,
                ..
            } => (*timeout_ms, *metrics, via.feed()),
            Command::Demo { .. } => (1000, true, Feed::Files),
            Command::Chaos {
                file,
                short,
                faults,
                via,
            } => return chaos(bin, file.as_deref(), *short, faults, via.feed()),
            Command::Soak {
                file,
                minutes,
                sample_seconds,
                out,
                via,
            } => {
                let options = palisade_lab::chaos::soak::Options {
                    bin,
                    feed: via.feed(),
                    duration: Duration::from_secs_f64(minutes * 60.0),
                    sample: Duration::from_secs(*sample_seconds),
                    out: out.clone(),
                };
                return soak(file.as_deref(), &options);
            }
        };
        let options = palisade_lab::Options {
            bin,
            timeout: Duration::from_millis(timeout_ms),
            // Under QEMU's TCG the first load alone verifies for about 30 s.
            in_force_limit: Duration::from_secs(120),
            show_metrics,
            feed,
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
            Command::Run { files, json, .. } => {
                let (reports, code) =
                    runtime.block_on(palisade_lab::run_files(files, &options, !json));
                if *json {
                    let doc = serde_json::json!({"exit": code, "scenarios": reports});
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                }
                ExitCode::from(code)
            }
            Command::Demo { policies, save } => demo(&runtime, &options, policies, save.as_deref()),
            Command::Chaos { .. } | Command::Soak { .. } => unreachable!("handled above"),
        }
    }

    /// The scenario file given, or the built-in chaos load.
    fn load_text(file: Option<&Path>) -> Result<(String, String), ExitCode> {
        match file {
            Some(f) => match std::fs::read_to_string(f) {
                Ok(t) => Ok((t, f.display().to_string())),
                Err(e) => {
                    eprintln!("palisade: {}: {e}", f.display());
                    Err(ExitCode::from(2))
                }
            },
            None => Ok((
                palisade_lab::chaos::STANDARD.to_owned(),
                "tests/chaos/standard.yaml".into(),
            )),
        }
    }

    /// Two workers: a fault that blocks one (writing a thousand objects to
    /// the test API server) must not stall the pods' listeners, or the
    /// probes would fail for a reason that is not Palisade's.
    fn two_workers() -> Result<tokio::runtime::Runtime, ExitCode> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| {
                eprintln!("palisade: runtime: {e}");
                ExitCode::FAILURE
            })
    }

    fn soak(file: Option<&Path>, options: &palisade_lab::chaos::soak::Options) -> ExitCode {
        use palisade_lab::chaos::soak::{Sample, growth};
        let (text, name) = match load_text(file) {
            Ok(t) => t,
            Err(code) => return code,
        };
        let runtime = match two_workers() {
            Ok(r) => r,
            Err(code) => return code,
        };
        let samples = match runtime.block_on(palisade_lab::chaos::soak::run(&text, &name, options))
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("palisade: soak: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let Some(last) = samples.last() else {
            return ExitCode::FAILURE;
        };
        let rss = growth(&samples, |s: &Sample| s.rss_kib as f64);
        let fds = growth(&samples, |s: &Sample| s.fds as f64);
        let entries: Vec<String> = palisade_lab::chaos::soak::PLOTTED
            .iter()
            .map(|m| {
                let g = growth(&samples, |s: &Sample| {
                    s.entries.get(*m).copied().unwrap_or(0) as f64
                });
                format!("{m} {g:.3}")
            })
            .collect();
        println!(
            "soak: {:.0} min, {} probes, {} wrong verdicts, {} held flows broken, {} changes; growth (last third over first): RSS {rss:.3}, fds {fds:.3}, {}",
            last.seconds / 60.0,
            last.probes,
            last.wrong,
            last.broken,
            last.changes,
            entries.join(", ")
        );
        if last.wrong == 0 && last.broken == 0 && rss <= 1.25 && fds <= 1.10 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    fn chaos(
        bin: PathBuf,
        file: Option<&Path>,
        short: bool,
        faults: &[String],
        feed: Feed,
    ) -> ExitCode {
        use palisade_lab::chaos;
        let (text, name) = match load_text(file) {
            Ok(t) => t,
            Err(code) => return code,
        };
        let mut options = if short {
            chaos::Options::short(bin, feed)
        } else {
            chaos::Options::full(bin, feed)
        };
        if !faults.is_empty() {
            let mut chosen = Vec::new();
            for f in faults {
                match chaos::Fault::parse(f) {
                    Some(f) => chosen.push(f),
                    None => {
                        eprintln!(
                            "palisade: no fault {f:?}; faults: {}",
                            chaos::Fault::ALL.map(chaos::Fault::name).join(", ")
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            options.faults = chosen;
        }
        // Probers block in their own threads; the runtime only waits.
        let runtime = match two_workers() {
            Ok(r) => r,
            Err(code) => return code,
        };
        match runtime.block_on(chaos::run(&text, &name, &options)) {
            Ok(summary) => {
                println!("{}", summary.line());
                if summary.wrong == 0 && summary.broken == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("palisade: chaos: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    fn demo(
        runtime: &tokio::runtime::Runtime,
        options: &palisade_lab::Options,
        policies: &Path,
        save: Option<&Path>,
    ) -> ExitCode {
        let demo = match palisade_lab::demo::build(policies) {
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
        let (_, code) = runtime.block_on(palisade_lab::run_texts(inputs, options, true));
        if let Some(text) = demo.explained {
            println!("Why is one of those flows denied? palisade explain:\n{text}");
        }
        ExitCode::from(code)
    }
}

#[cfg(not(feature = "lab"))]
mod without_lab {
    use std::process::ExitCode;

    #[derive(clap::Args)]
    pub struct Args {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<String>,
    }

    /// Without the lab there is no check helper.
    pub fn check_helper() -> Option<ExitCode> {
        None
    }

    pub fn run(_: &Args) -> ExitCode {
        eprintln!("palisade: built without the lab (cargo feature `lab`)");
        ExitCode::from(2)
    }
}
