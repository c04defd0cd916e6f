//! What attaching Palisade's two TC programs to a new veth costs by itself:
//! the floor under every local pod added, whatever the daemon does around
//! it. Each TCX link is created under the kernel's routing lock, and the
//! kernel then waits for an RCU grace period before the new program list
//! is in use (`tcx_entry_sync` in the kernel's `include/net/tcx.h`).

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

/// Medians over fresh veths: one link, and both links of a veth.
pub struct AttachTimes {
    pub link_ms: f64,
    pub veth_ms: f64,
    pub veths: usize,
}

/// Attaches both TC programs to each of `veths` fresh bridge ports of a
/// throwaway lab node, timing each attach. `None`, said on the terminal,
/// where the kernel has no TCX (the clsact path the daemon takes there is
/// another cost) or the measurement failed: it is a side figure, and the
/// run goes on without it.
pub fn measure(veths: usize) -> Option<AttachTimes> {
    let features = Features::probe();
    if !features.tcx {
        println!("  a new veth's TC links: not measured (no TCX on this kernel)");
        return None;
    }
    // Its links' pins go with it however the measurement ends; the veths
    // with the lab's namespaces.
    let pins = crate::PinBase::new(
        std::path::Path::new(palisade::paths::BPFFS)
            .join(format!("palisade-churn-attach-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&pins.0);
    let (mut links, mut per_veth) = match attach_all(&pins.0, &features, veths) {
        Ok(times) => times,
        Err(e) => {
            println!("  a new veth's TC links: not measured: {e:#}");
            return None;
        }
    };
    let times = AttachTimes {
        link_ms: median(&mut links),
        veth_ms: median(&mut per_veth),
        veths,
    };
    println!(
        "  a new veth's two TCX links, {veths} fresh veths: median {:.1} ms a link, {:.1} ms a veth",
        times.link_ms, times.veth_ms
    );
    Some(times)
}

fn attach_all(
    base: &std::path::Path,
    features: &Features,
    veths: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let pins = PinDir::new(base);
    let mut loaded = loader::load_all(&pins, features)?;
    let lab = BridgeLab::new(veths)?;
    let names: Vec<String> = lab.pods.iter().map(|p| p.host_if.clone()).collect();
    lab.node.run(|| -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let (mut links, mut per_veth) = (Vec::new(), Vec::new());
        for name in &names {
            let ifindex = palisade::netns::ifindex(name)?;
            let mut veth = 0.0;
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                let t = Instant::now();
                attach_tc(&mut loaded.tc, &pins, ifindex, hook, true)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                links.push(ms);
                veth += ms;
            }
            per_veth.push(veth);
        }
        Ok((links, per_veth))
    })?
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
