//! The `process` and `file` sections of Palisade's policies: which programs
//! a selected pod may execute and which files it may open. Parsed and
//! validated here; the BPF-LSM programs that enforce them come with the LSM
//! work, keyed by the pod's cgroup.
//!
//! A section has a posture: `Denylist` (the default) allows everything its
//! Block rules do not name; `Allowlist` blocks everything its Allow rules do
//! not name. `Audit` rules report matches and block nothing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::parse::Invalid;

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Posture {
    #[default]
    Denylist,
    Allowlist,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LsmAction {
    Allow,
    Block,
    Audit,
}

/// A directory and, with `recursive`, everything below it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirMatch {
    /// Absolute, ending in `/`.
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture: Option<Posture>,
    #[serde(default)]
    pub rules: Vec<ProcessRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessRule {
    pub action: LsmAction,
    /// Executables by absolute path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_source: Vec<String>,
    #[serde(default)]
    pub owner_only: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posture: Option<Posture>,
    #[serde(default)]
    pub rules: Vec<FileRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileRule {
    pub action: LsmAction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_source: Vec<String>,
    #[serde(default)]
    pub owner_only: bool,
    /// The rule covers writes only (open for writing, unlink, rename):
    /// a Block rule with it leaves reads allowed.
    #[serde(default)]
    pub read_only: bool,
}

/// A namespace's default for what no Allow rule lists (placeholder until
/// the model branch lands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPosture {
    Block,
    Audit,
    Allow,
}

pub fn namespace_postures(
    ns: &super::Namespace,
) -> Result<(DefaultPosture, DefaultPosture), Invalid> {
    let read = |key: &str| match ns.annotations.get(key).map(String::as_str) {
        None => Ok(None),
        Some("block") => Ok(Some(DefaultPosture::Block)),
        Some("audit") => Ok(Some(DefaultPosture::Audit)),
        Some("allow") => Ok(Some(DefaultPosture::Allow)),
        Some(other) => Err(Invalid::new(
            format!("metadata.annotations.{key}"),
            format!("{other:?}: expected block, audit or allow"),
        )),
    };
    let file = read("kubearmor-file-posture")?.unwrap_or(DefaultPosture::Audit);
    let process = read("kubearmor-process-posture")?.unwrap_or(file);
    Ok((file, process))
}

/// An absolute, normalised path: no empty, `.` or `..` components, at most
/// 4095 bytes (PATH_MAX with its NUL), no NUL. A directory ends in `/`.
fn check_path(path: &str, dir: bool) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.len() >= 4096 || path.contains('\0') {
        return Err(format!("{path:?} is longer than PATH_MAX or contains NUL"));
    }
    if dir != path.ends_with('/') {
        return Err(if dir {
            format!("{path:?}: a directory must end in '/'")
        } else {
            format!("{path:?}: a file path must not end in '/' (use dirs)")
        });
    }
    let inner = path.trim_start_matches('/').trim_end_matches('/');
    if !inner.is_empty()
        && inner
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "{path:?} is not normalised (empty, '.' or '..' component)"
        ));
    }
    Ok(())
}

fn check_rule(at: &str, paths: &[String], dirs: &[DirMatch]) -> Result<(), Invalid> {
    if paths.is_empty() && dirs.is_empty() {
        return Err(Invalid::new(at, "a rule needs paths or dirs"));
    }
    for (i, p) in paths.iter().enumerate() {
        check_path(p, false).map_err(|e| Invalid::new(format!("{at}.paths[{i}]"), e))?;
    }
    for (i, d) in dirs.iter().enumerate() {
        check_path(&d.path, true).map_err(|e| Invalid::new(format!("{at}.dirs[{i}].path"), e))?;
    }
    Ok(())
}

impl ProcessSection {
    pub fn validate(&self, at: &str) -> Result<(), Invalid> {
        for (i, r) in self.rules.iter().enumerate() {
            check_rule(&format!("{at}.rules[{i}]"), &r.paths, &r.dirs)?;
        }
        Ok(())
    }
}

impl FileSection {
    pub fn validate(&self, at: &str) -> Result<(), Invalid> {
        for (i, r) in self.rules.iter().enumerate() {
            let here = format!("{at}.rules[{i}]");
            check_rule(&here, &r.paths, &r.dirs)?;
            if r.read_only && r.action == LsmAction::Allow {
                return Err(Invalid::new(
                    format!("{here}.readOnly"),
                    "only Block and Audit rules can be limited to writes",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_normalised() {
        assert!(check_path("/bin/cat", false).is_ok());
        assert!(check_path("/usr/bin/", true).is_ok());
        assert!(check_path("/", true).is_ok());
        for (bad, dir) in [
            ("bin/cat", false),
            ("/bin/../etc/shadow", false),
            ("/bin//cat", false),
            ("/bin/./cat", false),
            ("/usr/bin", true),
            ("/usr/bin/", false),
        ] {
            assert!(check_path(bad, dir).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sections_validate_with_the_field_named() {
        let p: ProcessSection = crate::model::yaml::from_str(
            "{posture: Allowlist, rules: [{action: Allow, paths: [/bin/sh], dirs: [{path: /usr/bin/, recursive: true}]}]}",
        )
        .unwrap();
        assert!(p.validate("spec.process").is_ok());
        let bad: ProcessSection =
            crate::model::yaml::from_str("{rules: [{action: Block, paths: [sh]}]}").unwrap();
        let err = bad.validate("spec.process").unwrap_err();
        assert!(
            err.to_string().contains("spec.process.rules[0].paths[0]"),
            "{err}"
        );
        let empty: FileSection =
            crate::model::yaml::from_str("{rules: [{action: Block}]}").unwrap();
        assert!(empty.validate("spec.file").is_err());
        let ro: FileSection = crate::model::yaml::from_str(
            "{rules: [{action: Allow, paths: [/etc/x], readOnly: true}]}",
        )
        .unwrap();
        assert!(
            ro.validate("spec.file")
                .unwrap_err()
                .to_string()
                .contains("readOnly")
        );
        assert!(crate::model::yaml::from_str::<FileSection>("{rules: [{action: Kill}]}").is_err());
        assert!(crate::model::yaml::from_str::<FileSection>("{rulez: []}").is_err());
    }
}
