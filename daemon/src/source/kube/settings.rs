//! Node settings from a ConfigMap (`--node-settings NAMESPACE/NAME`), so
//! that they change without a restart:
//!
//! ```yaml
//! data:
//!   denyCIDRs: |        # the prefilter's node deny list, one CIDR per line
//!     192.0.2.0/24      # (or separated by commas); added to --deny-cidr
//! ```
//!
//! A ConfigMap that does not exist sets nothing. A value that does not
//! read is reported and the last good list stays in force; an unknown key
//! is reported too, since a misspelt one would otherwise set nothing
//! silently.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ConfigMap;

pub const DENY_CIDRS: &str = "denyCIDRs";
const KEYS: [&str; 1] = [DENY_CIDRS];

/// The deny list a ConfigMap gives, or what is wrong with it (each fault
/// named by its key).
pub fn deny_cidrs(map: &ConfigMap) -> Result<Vec<IpNet>, Vec<String>> {
    let data = map.data.clone().unwrap_or_default();
    let mut errors: Vec<String> = data
        .keys()
        .filter(|k| !KEYS.contains(&k.as_str()))
        .map(|k| {
            format!(
                "data.{k}: not a setting Palisade knows (known: {})",
                KEYS.join(", ")
            )
        })
        .collect();
    let mut cidrs = Vec::new();
    for entry in data
        .get(DENY_CIDRS)
        .map(String::as_str)
        .unwrap_or("")
        .split(['\n', ','])
        .map(|e| e.split('#').next().unwrap_or("").trim())
        .filter(|e| !e.is_empty())
    {
        match entry.parse::<IpNet>() {
            Ok(net) => cidrs.push(net.trunc()),
            Err(e) => errors.push(format!("data.{DENY_CIDRS}: {entry:?}: {e}")),
        }
    }
    if errors.is_empty() {
        cidrs.sort();
        cidrs.dedup();
        Ok(cidrs)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn lines_commas_and_comments() {
        let m = map(&[(
            DENY_CIDRS,
            "192.0.2.7/24  # lab\n\n198.51.100.1/32, 2001:db8::/32\n",
        )]);
        let got: Vec<String> = deny_cidrs(&m)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["192.0.2.0/24", "198.51.100.1/32", "2001:db8::/32"]);
        assert_eq!(deny_cidrs(&map(&[])).unwrap(), Vec::<IpNet>::new());
    }

    #[test]
    fn a_bad_entry_or_an_unknown_key_is_named() {
        let e = deny_cidrs(&map(&[(DENY_CIDRS, "192.0.2.0/33")])).unwrap_err();
        assert!(
            e[0].contains("data.denyCIDRs") && e[0].contains("192.0.2.0/33"),
            "{e:?}"
        );
        let e = deny_cidrs(&map(&[("denyCidrs", "192.0.2.0/24")])).unwrap_err();
        assert!(
            e[0].contains("data.denyCidrs") && e[0].contains("known: denyCIDRs"),
            "{e:?}"
        );
    }
}
