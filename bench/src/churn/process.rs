//! What the kernel says a process holds: its peak resident set, and the
//! memory of the BPF maps it has open; and a series of the daemon's own
//! metrics.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::Context as _;

/// `VmHWM` of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_hwm(&text).with_context(|| format!("no VmHWM in {path}"))
}

/// `(map_id, memlock)` of a map fd's fdinfo text.
pub fn parse_map_fdinfo(info: &str) -> Option<(u32, u64)> {
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((u32::try_from(field("map_id:")?).ok()?, field("memlock:")?))
}

/// The BPF maps `pid` holds open, each counted once however many
/// descriptors it has: how many, and the sum of their `memlock` (the
/// kernel's own account of each map's memory).
pub fn map_memory(pid: u32) -> anyhow::Result<(usize, u64)> {
    let fds = Path::new("/proc").join(pid.to_string()).join("fd");
    let mut maps = BTreeMap::new();
    for entry in fs::read_dir(&fds).with_context(|| format!("listing {}", fds.display()))? {
        let entry = entry?;
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        // A descriptor closed since the listing is no longer the daemon's.
        let Ok(text) = fs::read_to_string(&info) else {
            continue;
        };
        if let Some((id, memlock)) = parse_map_fdinfo(&text) {
            maps.insert(id, memlock);
        }
    }
    Ok((maps.len(), maps.values().sum()))
}

/// The value of series `name` (with its labels, if any, as written) in a
/// Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_read_in_kib() {
        let status = "Name:\tpalisade\nVmPeak:\t  999 kB\nVmHWM:\t   123456 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(123_456 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }

    #[test]
    fn a_maps_fdinfo_gives_its_id_and_memlock() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\nkey_size:\t4\nvalue_size:\t8\nmax_entries:\t1024\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t90112\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(parse_map_fdinfo(info), Some((42, 90_112)));
        assert_eq!(parse_map_fdinfo("pos:\t0\n"), None);
    }

    #[test]
    fn a_series_is_found_by_its_whole_name() {
        let text = "# HELP x_seconds y\n# TYPE x_seconds summary\nx_seconds{quantile=\"0.5\"} 0.25\nx_seconds_sum 1.5\nx_seconds_count 6\n";
        assert_eq!(metric(text, "x_seconds_sum"), Some(1.5));
        assert_eq!(metric(text, "x_seconds_count"), Some(6.0));
        assert_eq!(metric(text, "x_seconds{quantile=\"0.5\"}"), Some(0.25));
        assert_eq!(metric(text, "x_seconds"), None);
    }

    #[test]
    fn this_process_has_a_peak() {
        assert!(peak_rss(std::process::id()).unwrap() > 0);
    }
}
