//! What attaching Palisade's two TC programs to a new veth costs by itself:
//! the floor under every local pod added, whatever the daemon does around
//! it. Both ways the daemon attaches are timed, with Palisade's own
//! programs, on fresh veths taken in turn, so that neither gets the quieter
//! machine:
//! - TCX links (6.6+, the daemon's choice where the kernel has them). Each
//!   is created under the kernel's routing lock, and the kernel then waits
//!   for an RCU grace period before the new program list is in use
//!   (`tcx_entry_sync` in the kernel's `include/net/tcx.h`);
//! - a clsact qdisc and two cls_bpf filters (older kernels), by netlink from
//!   this process, as the daemon attaches them.

use std::time::Instant;

use palisade::{
    loader::{
        self,
        attach::{TcHook, attach_tc},
        features::Features,
    },
    paths::PinDir,
};
use palisade_lab::fixtures::BridgeLab;

/// Medians over fresh veths, per way of attaching.
pub struct AttachTimes {
    /// One TCX link.
    pub link_ms: f64,
    /// Both TCX links of a veth.
    pub veth_ms: f64,
    /// The clsact qdisc and both filters of a veth.
    pub clsact_veth_ms: f64,
    /// Veths per way.
    pub veths: usize,
}

/// Attaches both TC programs to each of `2 * veths` fresh bridge ports of a
/// throwaway lab node, alternately as TCX links and as clsact filters,
/// timing each attach. `None`, said on the terminal, where the kernel has
/// no TCX (there is nothing to compare) or the measurement failed: it is a
/// side figure, and the run goes on without it.
pub fn measure(veths: usize) -> Option<AttachTimes> {
    let features = Features::probe();
    if !features.tcx {
        println!("  a new veth's TC programs: not measured (no TCX on this kernel)");
        return None;
    }
    // Its links' pins go with it however the measurement ends; the veths
    // and their filters with the lab's namespaces.
    let pins = crate::PinBase::new(
        std::path::Path::new(palisade::paths::BPFFS)
            .join(format!("palisade-churn-attach-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&pins.0);
    let mut t = match attach_all(&pins.0, &features, veths) {
        Ok(times) => times,
        Err(e) => {
            println!("  a new veth's TC programs: not measured: {e:#}");
            return None;
        }
    };
    let times = AttachTimes {
        link_ms: median(&mut t.links),
        veth_ms: median(&mut t.tcx_veths),
        clsact_veth_ms: median(&mut t.clsact_veths),
        veths,
    };
    println!(
        "  a new veth's two TC programs, {veths} fresh veths each way: TCX median {:.1} ms a link, {:.1} ms a veth; clsact {:.1} ms a veth",
        times.link_ms, times.veth_ms, times.clsact_veth_ms
    );
    Some(times)
}

#[derive(Default)]
struct Timings {
    links: Vec<f64>,
    tcx_veths: Vec<f64>,
    clsact_veths: Vec<f64>,
}

fn attach_all(
    base: &std::path::Path,
    features: &Features,
    veths: usize,
) -> anyhow::Result<Timings> {
    let pins = PinDir::new(base);
    let mut loaded = loader::load_all(&pins, features)?;
    let lab = BridgeLab::new(2 * veths)?;
    let names: Vec<String> = lab.pods.iter().map(|p| p.host_if.clone()).collect();
    lab.node.run(|| -> anyhow::Result<Timings> {
        let mut t = Timings::default();
        for (n, name) in names.iter().enumerate() {
            let ifindex = palisade::netns::ifindex(name)?;
            let tcx = n % 2 == 0;
            let mut veth = 0.0;
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                let start = Instant::now();
                attach_tc(&mut loaded.tc, &pins, ifindex, hook, tcx)?;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                if tcx {
                    t.links.push(ms);
                }
                veth += ms;
            }
            if tcx {
                t.tcx_veths.push(veth);
            } else {
                t.clsact_veths.push(veth);
            }
        }
        // A figure this small is believed only with the filters seen in
        // place, by another tool.
        for name in names.iter().skip(1).step_by(2) {
            for side in ["ingress", "egress"] {
                let out = std::process::Command::new("tc")
                    .args(["filter", "show", "dev", name, side])
                    .output()?;
                let shown = String::from_utf8_lossy(&out.stdout);
                anyhow::ensure!(
                    shown.contains("direct-action") && shown.contains("pal_tc_"),
                    "no Palisade filter on {name} {side}: {shown}"
                );
            }
        }
        Ok(t)
    })?
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
