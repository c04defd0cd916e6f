//! The process and file rules, in the one form every kind converts into
//! (Palisade's `process:`/`file:` sections, KubeArmorPolicy's `process` and
//! `file`): which programs a selected pod may execute and which files it
//! may open. Parsed and validated here; the BPF-LSM programs that enforce
//! them are keyed by the pod's cgroup.
//!
//! What a rule means (README, "Process and file rules: precedence"):
//!
//! - it matches by `paths` (exact), `dirs` (the directory's entries, or with
//!   `recursive` everything below it) and `patterns` (see `glob.rs`);
//! - `fromSource` (absolute executables) limits it to operations by
//!   processes running one of them; empty: any process;
//! - `ownerOnly`: only the file's owner may do what the rule matches: for a
//!   process whose user is not the file's owner, an Allow or Block rule
//!   blocks and an Audit rule reports; for the owner an Allow rule allows
//!   and a Block or Audit rule does not apply (KubeArmor's "allow owner
//!   only; otherwise block");
//! - `readOnly` (file rules): a Block or Audit rule covers writes only
//!   (open for writing or creating, unlink, rmdir, rename, link, truncate,
//!   chmod, chown, mknod, mkdir, symlink) and leaves reads alone. An Allow
//!   rule with it, which only KubeArmorPolicy may carry (KubeArmor's "allow
//!   to read only"), allows reads; the writes it matches are not allowed by
//!   it and fall to the section's default like anything unlisted. For
//!   Palisade's own kinds `readOnly` on Allow stays an error: write the
//!   Block rule that says it.
//!
//! A section's default (its posture) applies only where the pod has an
//! Allow rule in that section: `Allowlist` blocks what no Allow rule names,
//! `Denylist` allows it, and without a posture the namespace's annotations
//! decide (`posture.rs`). `Audit` rules report matches and block nothing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{glob, parse::Invalid};

/// The longest path a rule may name, in bytes: the kernel side matches
/// paths through a 252-byte LPM key (a 4-byte prefix length, the path and
/// room for its terminator and a directory's trailing byte).
pub const MAX_RULE_PATH: usize = 250;

/// What a section does with operations none of its rules names, where the
/// pod has an Allow rule in it: `Allowlist` blocks them, `Denylist` allows
/// them. Without one, the namespace's `kubearmor-file-posture` or
/// `kubearmor-process-posture` annotation decides (default audit).
// `Default` (Denylist) is for callers that need a value; a section without
// a posture takes its namespace's (`posture.rs`), not this.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Posture {
    #[default]
    Denylist,
    Allowlist,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
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
    /// Absolute globs: `*`, `?` and `**` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// Only executions by processes running one of these executables
    /// (absolute paths); any process when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_source: Vec<String>,
    /// Only the executable's owner may run it.
    #[serde(default, skip_serializing_if = "is_false")]
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
    /// Absolute globs: `*`, `?` and `**` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// Only opens by processes running one of these executables (absolute
    /// paths); any process when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_source: Vec<String>,
    /// The rule covers writes only (open for writing or creating, unlink,
    /// rmdir, rename, link, truncate, chmod, chown, mknod, mkdir,
    /// symlink): a Block rule with it leaves reads allowed.
    #[serde(default)]
    pub read_only: bool,
    /// Only the file's owner may do what the rule matches (for a new
    /// name, the directory's owner).
    #[serde(default, skip_serializing_if = "is_false")]
    pub owner_only: bool,
}

// serde's `skip_serializing_if` takes a reference.
fn is_false(b: &bool) -> bool {
    !*b
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

/// A path a rule names (a file, a directory ending in `/`, or an
/// executable in `fromSource`): [`check_path`] and [`MAX_RULE_PATH`].
pub fn check_rule_path(path: &str, dir: bool) -> Result<(), String> {
    check_path(path, dir)?;
    if path.len() > MAX_RULE_PATH {
        return Err(format!(
            "{} bytes, above the limit of {MAX_RULE_PATH} for a rule's path",
            path.len()
        ));
    }
    Ok(())
}

/// A rule's pattern: see `glob.rs`.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    glob::check(pattern)
}

/// What both sections' rules share, named in Palisade's fields.
struct Matches<'a> {
    paths: &'a [String],
    dirs: &'a [DirMatch],
    patterns: &'a [String],
    from_source: &'a [String],
}

fn check_rule(at: &str, m: &Matches<'_>) -> Result<(), Invalid> {
    if m.paths.is_empty() && m.dirs.is_empty() && m.patterns.is_empty() {
        return Err(Invalid::new(at, "a rule needs paths, dirs or patterns"));
    }
    let field = |name: String| move |e: String| Invalid::new(format!("{at}.{name}"), e);
    for (i, p) in m.paths.iter().enumerate() {
        check_rule_path(p, false).map_err(field(format!("paths[{i}]")))?;
    }
    for (i, d) in m.dirs.iter().enumerate() {
        check_rule_path(&d.path, true).map_err(field(format!("dirs[{i}].path")))?;
    }
    for (i, p) in m.patterns.iter().enumerate() {
        check_pattern(p).map_err(field(format!("patterns[{i}]")))?;
    }
    for (i, p) in m.from_source.iter().enumerate() {
        check_rule_path(p, false).map_err(field(format!("fromSource[{i}]")))?;
    }
    Ok(())
}

impl ProcessSection {
    pub fn validate(&self, at: &str) -> Result<(), Invalid> {
        for (i, r) in self.rules.iter().enumerate() {
            let m = Matches {
                paths: &r.paths,
                dirs: &r.dirs,
                patterns: &r.patterns,
                from_source: &r.from_source,
            };
            check_rule(&format!("{at}.rules[{i}]"), &m)?;
        }
        Ok(())
    }
}

impl FileSection {
    /// Palisade's own kinds: `readOnly` on an Allow rule is refused (see
    /// the module's docs).
    pub fn validate(&self, at: &str) -> Result<(), Invalid> {
        for (i, r) in self.rules.iter().enumerate() {
            let here = format!("{at}.rules[{i}]");
            let m = Matches {
                paths: &r.paths,
                dirs: &r.dirs,
                patterns: &r.patterns,
                from_source: &r.from_source,
            };
            check_rule(&here, &m)?;
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

    #[test]
    fn patterns_sources_and_owner_only_are_read_and_checked() {
        let f: FileSection = crate::model::yaml::from_str(
            "{rules: [{action: Block, patterns: ['/**/id_*sa'], fromSource: [/bin/cat], ownerOnly: true, readOnly: true}]}",
        )
        .unwrap();
        assert!(f.validate("spec.file").is_ok());
        let r = &f.rules[0];
        assert_eq!(r.patterns, ["/**/id_*sa"]);
        assert_eq!(r.from_source, ["/bin/cat"]);
        assert!(r.owner_only && r.read_only);
        let p: ProcessSection = crate::model::yaml::from_str(
            "{rules: [{action: Allow, patterns: ['/usr/*/python3*'], ownerOnly: true}]}",
        )
        .unwrap();
        assert!(p.validate("spec.process").is_ok() && p.rules[0].owner_only);
        for (text, field) in [
            (
                "{rules: [{action: Block, patterns: ['/etc/[ab]']}]}",
                "spec.process.rules[0].patterns[0]",
            ),
            (
                "{rules: [{action: Block, paths: [/bin/sh], fromSource: [bash]}]}",
                "spec.process.rules[0].fromSource[0]",
            ),
            (
                "{rules: [{action: Block, paths: [/bin/sh], fromSource: [/usr/bin/]}]}",
                "spec.process.rules[0].fromSource[0]",
            ),
        ] {
            let p: ProcessSection = crate::model::yaml::from_str(text).unwrap();
            let e = p.validate("spec.process").unwrap_err().to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        assert!(
            crate::model::yaml::from_str::<ProcessSection>(
                "{rules: [{action: Allow, paths: [/bin/sh], readOnly: true}]}"
            )
            .is_err(),
            "readOnly is for file rules"
        );
    }

    #[test]
    fn rule_paths_longer_than_the_lpm_key_are_refused_by_field() {
        let at_limit = format!("/{}", "a".repeat(MAX_RULE_PATH - 1));
        let over = format!("/{}", "a".repeat(MAX_RULE_PATH));
        assert!(check_rule_path(&at_limit, false).is_ok());
        let dir_at_limit = format!("/{}/", "d".repeat(MAX_RULE_PATH - 2));
        assert!(check_rule_path(&dir_at_limit, true).is_ok());
        let e = check_rule_path(&over, false).unwrap_err();
        assert!(e.contains("limit of 250"), "{e}");
        for (rule, field) in [
            (format!("{{action: Block, paths: [{over}]}}"), "paths[0]"),
            (
                format!("{{action: Block, dirs: [{{path: {over}/}}]}}"),
                "dirs[0].path",
            ),
            (
                format!("{{action: Block, paths: [/x], fromSource: [{over}]}}"),
                "fromSource[0]",
            ),
        ] {
            let f: FileSection =
                crate::model::yaml::from_str(&format!("{{rules: [{rule}]}}")).unwrap();
            let e = f.validate("spec.file").unwrap_err();
            assert_eq!(e.path, format!("spec.file.rules[0].{field}"), "{e}");
            assert!(e.message.contains("250"), "{e}");
        }
    }
}
