//! `palisade daemon`: the node agent.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use palisade::{
    loader::sizes::MapSizes,
    netns,
    node::{agent, discover},
    paths::PinDir,
    source::{
        files::FileSource,
        kube::{self, cgroup},
    },
};

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    /// A directory of YAML files (Namespaces, Pods, policies), watched.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    source: Option<PathBuf>,
    /// Read namespaces, pods and policies from the Kubernetes API
    /// (in-cluster service account, else `--kubeconfig`, `$KUBECONFIG`
    /// or `~/.kube/config`).
    #[arg(long)]
    kube: bool,
    /// With --kube: the kubeconfig to use instead.
    #[arg(long, value_name = "FILE", requires = "kube")]
    kubeconfig: Option<PathBuf>,
    /// With --kube: this node's name, as its pods' `spec.nodeName` say
    /// (the DaemonSet sets NODE_NAME from the downward API).
    #[arg(long, env = "NODE_NAME", requires = "kube")]
    node_name: Option<String>,
    /// With --kube: where the cgroup v2 hierarchy is mounted; pods'
    /// cgroups are found under it from their uid and QoS class.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// With --kube: the kubelet's cgroup driver: systemd, cgroupfs, or
    /// auto (whichever holds the pod's directory).
    #[arg(long, default_value = "auto")]
    cgroup_driver: cgroup::Driver,
    /// With --kube: the node settings' ConfigMap, NAMESPACE/NAME (key
    /// `denyCIDRs`: the prefilter's node deny list, added to --deny-cidr),
    /// watched and applied without a restart.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "kube")]
    node_settings: Option<String>,
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
    metrics_addr: Option<SocketAddr>,
    /// With --metrics-addr: also serve everything, the event stream
    /// (`/events`) and `/explain` included, on this loopback address. The
    /// metrics endpoint serves those only when it is on loopback itself,
    /// since with hostNetwork pods reach the node's addresses.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9964")]
    api_addr: SocketAddr,
    /// Label drop and allow counters by pod for at most N pods (the
    /// rest share pod="other"); off by default to bound the series.
    #[arg(long, value_name = "N")]
    metrics_pod_labels: Option<usize>,
    /// Attach the XDP prefilter to this uplink (repeatable; `auto`: the
    /// interfaces of the node's default routes, followed as they change):
    /// it drops the
    /// --deny-cidr sources and connection attempts to this node's pods
    /// that an explicit deny refuses whatever else applies.
    #[arg(long = "uplink", value_name = "IFACE")]
    uplinks: Vec<String>,
    /// Node-level deny list for the prefilter (repeatable): every packet
    /// from these sources is dropped on the uplinks, the node's own
    /// traffic included.
    #[arg(long = "deny-cidr", value_name = "CIDR")]
    deny_cidrs: Vec<ipnet::IpNet>,
    /// Where the kernel has TCX, a new pod's veth gets clsact filters
    /// first (0.1 ms a veth, against 24 ms for two TCX links, which each
    /// wait for an RCU grace period), added by a child process that keeps
    /// CAP_NET_ADMIN alone (the daemon keeps none), and moves to TCX links
    /// once the daemon is idle. With this flag a new veth gets its TCX
    /// links at once, and no helper is started (but to remove filters an
    /// earlier daemon left).
    #[arg(long)]
    tc_links_only: bool,
    /// How long the daemon waits with nothing to do before it moves a
    /// veth from filters to TCX links (tests lengthen it).
    #[arg(long, default_value_t = 200, hide = true)]
    tc_move_when_idle_ms: u64,
    /// Honour a Pod's `palisade.dev/source-check: "off"` and
    /// `palisade.dev/source-prefixes` annotations (a gateway or VPN pod
    /// that sends others' packets). Off by default: whoever may write a
    /// Pod could otherwise have it send from its neighbours' addresses;
    /// such a Pod is then checked against its own addresses, with an
    /// error in the status.
    #[arg(long)]
    allow_source_check_opt_out: bool,
}

pub fn run(args: Args, pins: &PinDir, sizes: &MapSizes) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // `auto` is followed: the prefilter moves with the default routes.
        let follow_default_routes = args.uplinks.iter().any(|u| u == "auto").then(|| {
            args.uplinks
                .iter()
                .filter(|u| *u != "auto")
                .cloned()
                .collect()
        });
        let uplinks = resolve_uplinks(args.uplinks).await?;
        let options = agent::Options {
            status_file: args.status_file,
            resync: Duration::from_millis(args.resync_ms),
            quarantine: (!args.no_quarantine).then_some(args.quarantine_prefix),
            metrics_addr: args.metrics_addr,
            api_addr: Some(args.api_addr),
            metrics_pod_labels: args.metrics_pod_labels,
            uplinks,
            follow_default_routes,
            deny_cidrs: args.deny_cidrs,
            tc_filters_first: !args.tc_links_only,
            tc_move_when_idle: Duration::from_millis(args.tc_move_when_idle_ms),
            allow_source_check_opt_out: args.allow_source_check_opt_out,
        };
        match args.source {
            Some(dir) => {
                let files = FileSource::new(dir);
                agent::Agent::start(files, pins.clone(), sizes, options)
                    .await?
                    .run()
                    .await
            }
            None => {
                let node = args
                    .node_name
                    .context("--kube needs the node's name: --node-name or NODE_NAME")?;
                let client = kube::client(args.kubeconfig).await?;
                let source = kube::KubeSource::start(
                    client,
                    kube::Options {
                        node,
                        cgroups: cgroup::Layout {
                            root: args.cgroup_root,
                            driver: args.cgroup_driver,
                        },
                        settings: match args.node_settings {
                            Some(s) => Some(
                                s.split_once('/')
                                    .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
                                    .context("--node-settings: NAMESPACE/NAME")?,
                            ),
                            None => None,
                        },
                    },
                );
                agent::Agent::start(source, pins.clone(), sizes, options)
                    .await?
                    .run()
                    .await
            }
        }
    })
}

/// `--uplink` names, with `auto` replaced by the default routes' interfaces.
async fn resolve_uplinks(named: Vec<String>) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for name in named {
        if name != "auto" {
            out.push(name);
            continue;
        }
        let handle = discover::connect()?;
        let found = discover::default_route_links(&handle).await?;
        anyhow::ensure!(
            !found.is_empty(),
            "--uplink auto: the node has no default route"
        );
        for index in found {
            let name = netns::ifname(index)?;
            tracing::info!("--uplink auto: {name}");
            out.push(name);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
