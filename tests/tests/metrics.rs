//! Metrics and events against the real daemon on the lab's node: denied
//! probes are counted exactly under their policy and reason, streamed as
//! named events by `palisade events` (filtered by namespace), explained by
//! `palisade explain` asking the daemon, kept across a daemon restart; the output passes `promtool check metrics`, and a real
//! Prometheus server scraping the daemon answers a PromQL query with the
//! same count.

use std::{
    io::Write as _,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade::{
    lab::{
        cluster::cluster_yaml,
        enforcer::Enforcer,
        netns::Netns,
        probe::{Observed, probe},
        serve::Listeners,
        topology::{Plan, Topology},
    },
    model::{Protocol, scenario::ScenarioFile},
};
use palisade_tests::{palisade_bin, unique};

const POLICY: &str = "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: no-udp-from-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - action: Deny
    from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 81, protocol: UDP}]
  - action: Allow
";
const SERIES: &str = "palisade_drops_total{direction=\"ingress\",policy=\"palisade:x/no-udp-from-y-b\",reason=\"drop_policy_deny\"}";
const PROMETHEUS: &str = "127.0.0.1:9090";

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// A `palisade events` process and its lines.
struct Events(std::process::Child, std::sync::mpsc::Receiver<String>);

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prometheus in the node namespace, scraping the daemon every second.
struct Prometheus(std::process::Child, std::path::PathBuf);

impl Prometheus {
    fn start(node: &Netns, target: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("palisade-prom-"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: palisade\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )?;
        let fd = node.fd();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?);
        // SAFETY: setns is async-signal-safe and changes only the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Self(cmd.spawn().context("starting prometheus")?, dir))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn denied_probes_are_counted_streamed_kept_and_scraped_by_prometheus() -> anyhow::Result<()> {
    if Command::new("promtool").arg("--version").output().is_err() {
        bail!("promtool missing: scripts/setup.sh installs Debian's prometheus package");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let snapshot = ScenarioFile::parse(
            "name: metrics\nnamespaces: {x: {labels: {ns: x}}, \"y\": {labels: {ns: \"y\"}}}\npods:\n- {namespace: x, name: a, labels: {pod: a}}\n- {namespace: \"y\", name: b, labels: {pod: b}}\n- {namespace: \"y\", name: c, labels: {pod: c}}\n",
            "metrics.yaml",
        )?
        .snapshot("metrics.yaml")?;
        let tag = unique("lab-metrics");
        let plan = Plan {
            tag: &tag,
            networks: vec!["10.244.0.0/16".parse()?],
            pods: snapshot.pods.iter().map(|p| (p.key(), p.ips.clone())).collect(),
            externals: Vec::new(),
        };
        let topology = Topology::build(&plan).await?;
        let a = &topology.pods["x/a"];
        let mut listeners = Listeners::default();
        listeners.serve(&a.netns, &a.ips, true, 81, Protocol::Udp)?;
        let dir = std::env::temp_dir().join(format!("palisade-{tag}"));
        let pins = Path::new("/sys/fs/bpf").join(format!("palisade-{tag}"));
        let mut enforcer = Enforcer::start(&palisade_bin()?, &topology.node, &dir, &pins)?;
        enforcer.write("cluster.yaml", &cluster_yaml(&snapshot))?;
        enforcer.write("policy.yaml", POLICY)?;
        let r = enforcer.commit()?;
        enforcer.wait(r, Duration::from_secs(30)).await?;

        // The event stream, through the real CLI, from the node namespace.
        let status: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("status.json"))?)?;
        let metrics_addr = status["metrics"].as_str().context("no metrics address")?.to_owned();
        let stream = |namespace: &str| -> anyhow::Result<Events> {
            let mut child = Command::new(palisade_bin()?)
                .args(["events", "--addr", &metrics_addr, "--namespace", namespace])
                .arg("--netns")
                .arg(format!("/proc/{}/ns/net", enforcer.pid()))
                .stdout(Stdio::piped())
                .spawn()?;
            let out = child.stdout.take().context("events stdout")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            Ok(Events(child, rx))
        };
        let x_events = stream("x")?;
        let y_events = stream("y")?;
        // Subscribed: the first line of a stream says what the kernel lost.
        let first = x_events.1.recv_timeout(Duration::from_secs(5))?;
        assert!(first.contains("\"type\":\"lost\""), "{first}");

        // Denied: y/b -> x/a UDP 81, each attempt one datagram, one drop.
        let target = SocketAddr::new(a.ips[0], 81);
        let mut sent = 0;
        // Probes block: off the runtime thread, which serves the listener.
        let probe_from = |pod: &str| {
            let path = topology.pods[pod].netns.path();
            tokio::task::spawn_blocking(move || {
                palisade::netns::in_netns(&path, || {
                    probe(target, Protocol::Udp, Duration::from_millis(300))
                })
            })
        };
        for _ in 0..3 {
            let (observed, attempts) = probe_from("y/b").await??;
            assert!(matches!(observed, Observed::Blocked(_)), "{observed:?}");
            sent += attempts;
        }
        // Allowed: y/c, which must not count as a drop of that policy.
        let (observed, _) = probe_from("y/c").await??;
        assert_eq!(observed, Observed::Reachable);

        let text = enforcer.scrape(&topology.node)?;
        assert_eq!(value_of(&text, SERIES), Some(f64::from(sent)), "{text}");

        // One event per drop, named; none for namespace y's pods.
        let mut events = Vec::new();
        while events.len() < sent as usize {
            let line = x_events.1.recv_timeout(Duration::from_secs(5))?;
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if v["type"] == "event" {
                events.push(v);
            }
        }
        for e in &events {
            assert_eq!(e["policy"], "palisade:x/no-udp-from-y-b", "{e}");
            assert_eq!(e["reason"], "drop_policy_deny", "{e}");
            assert_eq!(e["verdict"], "dropped", "{e}");
            assert_eq!(e["pod"], "x/a", "{e}");
            assert_eq!(e["protocol"], "UDP", "{e}");
            assert_eq!(e["dst"], format!("{}:81", a.ips[0]), "{e}");
        }
        assert!(
            y_events
                .1
                .try_iter()
                .all(|l| !l.contains("\"type\":\"event\"")),
            "namespace y saw events"
        );
        drop((x_events, y_events));

        // `palisade explain` without a file asks the running daemon.
        let explain = |from: &str| -> anyhow::Result<String> {
            let out = Command::new(palisade_bin()?)
                .args(["explain", "--addr", &metrics_addr, "--from", from, "--to", "x/a"])
                .args(["--port", "81", "--protocol", "UDP", "--netns"])
                .arg(format!("/proc/{}/ns/net", enforcer.pid()))
                .output()?;
            Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        };
        let denied = explain("y/b")?;
        assert!(denied.contains("DENIED"), "{denied}");
        assert!(
            denied.contains("ingress of x/a: denied by palisade:x/no-udp-from-y-b"),
            "{denied}"
        );
        let allowed = explain("y/c")?;
        assert!(allowed.contains("ALLOWED"), "{allowed}");
        assert!(explain("q/q")?.contains("no pod q/q"));

        // Counters live in the pinned maps: a restarted daemon keeps them.
        enforcer.restart(&palisade_bin()?, &topology.node)?;
        enforcer.wait(enforcer.revision(), Duration::from_secs(30)).await?;
        let text = enforcer.scrape(&topology.node)?;
        assert_eq!(value_of(&text, SERIES), Some(f64::from(sent)), "after a restart:\n{text}");
        for name in [
            "palisade_map_entries{map=\"PAL_CT4\"}",
            "palisade_kernel_feature{feature=\"tcx\"}",
            "palisade_reconcile_duration_seconds_count",
            "palisade_endpoints",
        ] {
            assert!(value_of(&text, name).is_some(), "{name} missing:\n{text}");
        }

        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        promtool
            .stdin
            .take()
            .context("promtool stdin")?
            .write_all(text.as_bytes())?;
        let out = promtool.wait_with_output()?;
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let status: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("status.json"))?)?;
        let target = status["metrics"].as_str().context("no metrics address")?.to_owned();
        let _prometheus = Prometheus::start(&topology.node, &target)?;
        // sum(palisade_drops_total{policy="palisade:x/no-udp-from-y-b",reason="drop_policy_deny"})
        let query = "/api/v1/query?query=sum(palisade_drops_total%7Bpolicy%3D%22palisade%3Ax%2Fno-udp-from-y-b%22%2Creason%3D%22drop_policy_deny%22%7D)";
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        loop {
            if let Ok(body) = topology.node.http_get(PROMETHEUS.parse()?, query) {
                let v: serde_json::Value = serde_json::from_str(&body)?;
                let value = v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok());
                if value == Some(f64::from(sent)) {
                    break;
                }
                last = body;
            }
            if Instant::now() > deadline {
                bail!("Prometheus never reported {sent} drops; last answer: {last}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(enforcer);
        drop(listeners);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}
