//! `palisade explain --pod NS/POD --exec|--read|--write PATH [--from EXE]`:
//! which policy and rule decide a process or file operation, or the
//! posture, read from the same compiled rule sets the kernel holds and
//! decided by the model of its lookup (`compile::lsm_decide`).

use std::fmt::Write as _;

use ebpf_common::lsm::{action, op, verdict_flags};

use crate::{
    compile::{
        lsm::pod_rules_of,
        lsm_decide::{DecidedBy, Decision},
    },
    model::Snapshot,
};

/// The operation asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Exec,
    Read,
    Write,
}

impl Operation {
    pub const ALL: [Self; 3] = [Self::Exec, Self::Read, Self::Write];

    /// As the command line and the endpoint's query spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// The decision (if any rule set judges the operation) and its text.
pub fn explain_lsm(
    s: &Snapshot,
    pod: &str,
    operation: Operation,
    path: &str,
    from: Option<&str>,
) -> Result<(Option<Decision>, String), String> {
    let target = s
        .pods
        .iter()
        .find(|p| p.key() == pod)
        .ok_or_else(|| format!("no pod {pod} (use namespace/pod)"))?;
    for p in [Some(path), from].into_iter().flatten() {
        if !p.starts_with('/') {
            return Err(format!("{p:?} is not an absolute path"));
        }
    }
    let (rules, ids, not_enforced) = pod_rules_of(s, target);
    let (set, section) = match operation {
        Operation::Exec => (rules.process.as_ref(), "process"),
        _ => (rules.file.as_ref(), "file"),
    };
    let what = format!("{pod} {} {path}", operation.name());
    let by_whom = from.map(|f| format!(" (by {f})")).unwrap_or_default();
    let Some(set) = set else {
        return Ok((
            None,
            format!(
                "{what}{by_whom}: ALLOWED\n  no policy gives {pod} {section} rules: \
                 its {section} operations are not judged\n"
            ),
        ));
    };
    let which = if operation == Operation::Write {
        op::WRITE
    } else {
        op::READ
    };
    let d = set.decide(path, which, from);
    let name = |id: u32| {
        ids.get(&id)
            .cloned()
            .unwrap_or_else(|| format!("policy {id}"))
    };
    let v = d.verdict;
    let outcome = match v.action {
        action::ALLOW => "ALLOWED",
        action::AUDIT => "ALLOWED (audited)",
        _ => "BLOCKED (EPERM)",
    };
    let mut text = format!("{what}{by_whom}: {outcome}\n");
    if v.flags & verdict_flags::OWNER_ONLY != 0 {
        let _ = writeln!(
            text,
            "  except for the file's owner (ownerOnly): the owner is allowed"
        );
    }
    if let Some(exe) = &d.source {
        let _ = writeln!(
            text,
            "  rules for processes running {exe} (fromSource), with the pod's general rules"
        );
    }
    let rule = match &d.by {
        DecidedBy::File(p) => format!("the rules for the file {p}"),
        DecidedBy::Dir {
            path,
            recursive,
            deeper: false,
        } => format!(
            "the directory rule {path}{}",
            if *recursive { " (recursive)" } else { "" }
        ),
        DecidedBy::Dir { path, .. } => format!(
            "the rule nearest above the children of {path} (which covers only its children)"
        ),
        DecidedBy::DirName(p) => format!(
            "the guard on the name of the directory {p}, which holds what that rule \
             protects (renamed, removed or changed, it would carry it away)"
        ),
        DecidedBy::Pattern(p) => format!("the pattern {p}"),
        DecidedBy::Guard(p) => format!(
            "the guard on directories matching {p}, which hold what a pattern protects \
             (renamed, one would carry it out of the pattern's reach; it judges renames only)"
        ),
        DecidedBy::Default => String::new(),
    };
    if v.flags & verdict_flags::DEFAULT != 0 {
        let why = if v.policy != 0 {
            format!("posture: Allowlist of {}", name(v.policy))
        } else if v.action == action::ALLOW {
            "what no rule lists is allowed (no Allow rules, a Denylist posture, or the \
             namespace's posture annotation says allow)"
                .to_owned()
        } else {
            "the namespace's posture annotation (kubearmor-*-posture; audit when absent) \
             for what the Allow rules do not list"
                .to_owned()
        };
        let _ = writeln!(text, "  decided by the {section} section's default: {why}");
        if !rule.is_empty() {
            let _ = writeln!(text, "  (reached through {rule})");
        }
    } else {
        let _ = writeln!(text, "  decided by {rule} of {}", name(v.policy));
    }
    if d.ambiguous {
        let _ = writeln!(
            text,
            "  the path is longer than the kernel's key: the stricter verdict was taken"
        );
    }
    for (policy, why) in &not_enforced {
        for w in why {
            let _ = writeln!(text, "  note: {policy}: {w}");
        }
    }
    Ok((Some(d), text))
}
