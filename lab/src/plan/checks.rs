//! Process and file checks and their fixtures, checked through: one
//! operation per check, `from:` naming an executable fixture, fixture paths
//! under `/srv/pal/` only, octal modes.

use std::path::{Path, PathBuf};

use palisade::model::parse::ParseError;

use crate::scenario::{CheckExpect, CheckSpec, EventExpect, FileSpec};

use super::Scenario;

/// Where fixtures may live, and where `write` and `unlink` may point: the
/// runner makes and removes what is there, nothing else on the machine.
pub const FIXTURE_ROOT: &str = "/srv/pal/";

/// One operation of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A command line, judged on how it starts and exits (the original form).
    Run(Vec<String>),
    /// execve(2) of the path.
    Exec(PathBuf),
    /// open(O_RDONLY) and read(2).
    Read(PathBuf),
    /// open(O_WRONLY|O_APPEND) and write(2) of one line.
    Write(PathBuf),
    /// unlink(2).
    Unlink(PathBuf),
}

impl Operation {
    /// The operation's name as events and the helper spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Run(_) => "run",
            Self::Exec(_) => "exec",
            Self::Read(_) => "read",
            Self::Write(_) => "write",
            Self::Unlink(_) => "unlink",
        }
    }

    /// The path operated on (none for `run`).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Run(_) => None,
            Self::Exec(p) | Self::Read(p) | Self::Write(p) | Self::Unlink(p) => Some(p),
        }
    }

    /// For reports: `read /srv/pal/x`, or the command line.
    pub fn describe(&self) -> String {
        match self {
            Self::Run(argv) => argv.join(" "),
            _ => format!(
                "{} {}",
                self.name(),
                self.path()
                    .map(Path::display)
                    .map(|p| p.to_string())
                    .unwrap_or_default()
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CheckPlan {
    pub pod: String,
    pub operation: Operation,
    /// The executable fixture that performs the operation.
    pub from: Option<PathBuf>,
    /// uid and gid; root when absent.
    pub user: Option<u32>,
    pub event: Option<EventExpect>,
    pub expect: CheckExpect,
}

/// What a fixture is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FixtureKind {
    File(String),
    Directory,
    /// A copy of the runner's own check helper.
    Executable,
    /// A symbolic link to this path.
    Link(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixture {
    pub path: PathBuf,
    pub kind: FixtureKind,
    /// uid and gid.
    pub owner: u32,
    /// Permission bits (links have none of their own).
    pub mode: u32,
}

/// `path` if it is absolute, normalised and strictly below `/srv/pal/`;
/// `dir` says whether it must end in `/`.
fn under_root(path: &str, what: &str) -> Result<PathBuf, String> {
    let inner = path
        .strip_prefix(FIXTURE_ROOT)
        .filter(|rest| !rest.trim_end_matches('/').is_empty())
        .ok_or_else(|| format!("{what} {path:?} is not below {FIXTURE_ROOT}"))?;
    if inner
        .trim_end_matches('/')
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
        || path.contains('\0')
    {
        return Err(format!(
            "{what} {path:?} is not normalised (empty, '.' or '..' component)"
        ));
    }
    Ok(PathBuf::from(path.trim_end_matches('/')))
}

fn absolute(path: &str, what: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(format!("{what} {path:?} is not an absolute path"));
    }
    Ok(PathBuf::from(path))
}

/// An octal mode string, `"0640"` or `"640"`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !text.is_empty())
        .ok_or_else(|| format!("mode {text:?} is not an octal mode such as \"0640\""))
}

/// One fixture of `files:`, checked.
fn plan_fixture(spec: &FileSpec) -> Result<Fixture, String> {
    let dir = spec.path.ends_with('/');
    let path = under_root(&spec.path, "path")?;
    let kinds = [
        spec.content.is_some(),
        spec.executable,
        spec.link.is_some(),
        dir,
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(format!(
            "{}: a fixture is one of a file with content, an executable, a link or a directory",
            spec.path
        ));
    }
    let kind = if dir {
        FixtureKind::Directory
    } else if spec.executable {
        FixtureKind::Executable
    } else if let Some(target) = &spec.link {
        if spec.mode.is_some() || spec.owner.is_some() {
            return Err(format!("{}: a link has no mode or owner", spec.path));
        }
        FixtureKind::Link(under_root(target, "link target")?)
    } else {
        FixtureKind::File(spec.content.clone().unwrap_or_default())
    };
    let default_mode = match kind {
        FixtureKind::Directory | FixtureKind::Executable | FixtureKind::Link(_) => 0o755,
        FixtureKind::File(_) => 0o644,
    };
    let mode = spec
        .mode
        .as_deref()
        .map(parse_mode)
        .transpose()
        .map_err(|e| format!("{}: {e}", spec.path))?
        .unwrap_or(default_mode);
    Ok(Fixture {
        path,
        kind,
        owner: spec.owner.unwrap_or(0),
        mode,
    })
}

/// Every fixture of `files:`, each path once, none below a file.
pub fn plan_fixtures(
    specs: &[FileSpec],
    err: impl Fn(usize, String) -> ParseError,
) -> Result<Vec<Fixture>, ParseError> {
    let mut fixtures: Vec<Fixture> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let f = plan_fixture(spec).map_err(|m| err(i, m))?;
        if fixtures.iter().any(|g| g.path == f.path) {
            return Err(err(i, format!("{} is declared twice", spec.path)));
        }
        if let Some(g) = fixtures.iter().find(|g| {
            g.kind != FixtureKind::Directory && f.path.starts_with(&g.path)
                || f.kind != FixtureKind::Directory && g.path.starts_with(&f.path)
        }) {
            return Err(err(
                i,
                format!(
                    "{} and {} cannot both be: one is a file the other lies below",
                    spec.path,
                    g.path.display()
                ),
            ));
        }
        fixtures.push(f);
    }
    Ok(fixtures)
}

impl Scenario {
    /// The checks of `checks:` or a `check` step at `at`, against the pods
    /// that exist then and the fixtures.
    pub(super) fn plan_checks(
        &self,
        checks: &[CheckSpec],
        at: &str,
    ) -> Result<Vec<CheckPlan>, ParseError> {
        checks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let here = format!("{at}[{i}]");
                self.plan_check(c).map_err(|m| self.err(&here, m))
            })
            .collect()
    }

    fn plan_check(&self, c: &CheckSpec) -> Result<CheckPlan, String> {
        if !self.cluster.pods.iter().any(|p| p.key() == c.pod) {
            return Err(format!("no pod {}", c.pod));
        }
        let mut operations = Vec::new();
        if let Some(run) = &c.run {
            if run.is_empty() {
                return Err("run is empty".into());
            }
            operations.push(Operation::Run(run.clone()));
        }
        if let Some(p) = &c.exec {
            operations.push(Operation::Exec(absolute(p, "exec")?));
        }
        if let Some(p) = &c.read {
            operations.push(Operation::Read(absolute(p, "read")?));
        }
        // What a check may change must be the runner's to restore.
        if let Some(p) = &c.write {
            operations.push(Operation::Write(under_root(p, "write")?));
        }
        if let Some(p) = &c.unlink {
            operations.push(Operation::Unlink(under_root(p, "unlink")?));
        }
        let operation = match <[Operation; 1]>::try_from(operations) {
            Ok([one]) => one,
            Err(v) => {
                return Err(format!(
                    "a check has exactly one of run, exec, read, write, unlink; this one has {}",
                    if v.is_empty() {
                        "none".to_owned()
                    } else {
                        v.iter().map(Operation::name).collect::<Vec<_>>().join(", ")
                    }
                ));
            }
        };
        let from = match &c.from {
            None => None,
            Some(_) if matches!(operation, Operation::Run(_)) => {
                return Err("from: applies to exec, read, write and unlink, not run".into());
            }
            Some(from) => {
                let path = PathBuf::from(from);
                if !self
                    .fixtures
                    .iter()
                    .any(|f| f.path == path && f.kind == FixtureKind::Executable)
                {
                    return Err(format!(
                        "from: {from} is not a fixture of `files:` with executable: true"
                    ));
                }
                Some(path)
            }
        };
        if c.event.is_some() && matches!(operation, Operation::Run(_)) {
            return Err("event: applies to exec, read, write and unlink, not run".into());
        }
        Ok(CheckPlan {
            pod: c.pod.clone(),
            operation,
            from,
            user: c.user,
            event: c.event,
            expect: c.expect,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FileSpec {
        palisade::model::yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn fixtures_lie_below_srv_pal_and_take_their_kind_and_mode() {
        let f = plan_fixture(&spec(
            "{path: /srv/pal/h1/secret.txt, content: \"s\\n\", owner: 1000, mode: \"0640\"}",
        ))
        .unwrap();
        assert_eq!(f.kind, FixtureKind::File("s\n".into()));
        assert_eq!((f.owner, f.mode), (1000, 0o640));
        let d = plan_fixture(&spec("{path: /srv/pal/h1/dir1/}")).unwrap();
        assert_eq!((d.kind, d.mode), (FixtureKind::Directory, 0o755));
        assert_eq!(d.path, PathBuf::from("/srv/pal/h1/dir1"));
        let x = plan_fixture(&spec("{path: /srv/pal/h1/bin/cat, executable: true}")).unwrap();
        assert_eq!((x.kind, x.mode), (FixtureKind::Executable, 0o755));
        let l = plan_fixture(&spec("{path: /srv/pal/l, link: /srv/pal/h1/secret.txt}")).unwrap();
        assert_eq!(l.kind, FixtureKind::Link("/srv/pal/h1/secret.txt".into()));
        for bad in [
            "{path: /etc/passwd}",
            "{path: /srv/pal/}",
            "{path: /srv/palx/a}",
            "{path: /srv/pal/../etc/passwd}",
            "{path: /srv/pal/a//b}",
            "{path: /srv/pal/a, mode: \"0999\"}",
            "{path: /srv/pal/a, mode: rw}",
            "{path: /srv/pal/a, executable: true, content: x}",
            "{path: /srv/pal/a/, content: x}",
            "{path: /srv/pal/a, link: /etc/shadow}",
        ] {
            assert!(plan_fixture(&spec(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixtures_are_declared_once_and_nothing_lies_below_a_file() {
        let err = |i: usize, m: String| ParseError::at_line("t.yaml", i + 1, m);
        let specs = |list: &[&str]| list.iter().map(|s| spec(s)).collect::<Vec<_>>();
        assert!(
            plan_fixtures(
                &specs(&["{path: /srv/pal/a/}", "{path: /srv/pal/a/b}"]),
                err
            )
            .is_ok()
        );
        let e = plan_fixtures(&specs(&["{path: /srv/pal/a}", "{path: /srv/pal/a/b}"]), err)
            .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e =
            plan_fixtures(&specs(&["{path: /srv/pal/a}", "{path: /srv/pal/a/}"]), err).unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
    }

    #[test]
    fn operations_describe_themselves() {
        let op = Operation::Read("/srv/pal/s".into());
        assert_eq!(
            (op.name(), op.describe()),
            ("read", "read /srv/pal/s".into())
        );
        let run = Operation::Run(vec!["/bin/true".into(), "x".into()]);
        assert_eq!((run.path(), run.describe()), (None, "/bin/true x".into()));
    }
}

#[cfg(test)]
mod planned {
    use crate::plan::{Action, Operation, Scenario};

    const HEAD: &str = "name: t
namespaces:
  x: {labels: {ns: x}, annotations: {kubearmor-file-posture: block}}
pods: [{namespace: x, name: a}]
files:
  - {path: /srv/pal/h1/secret.txt, content: \"s\\n\", owner: 1000, mode: \"0640\"}
  - {path: /srv/pal/h1/bin/cat, executable: true}
  - {path: /srv/pal/h1/plain.txt}
checks:
";

    fn load(checks: &str) -> Result<Scenario, palisade::model::parse::ParseError> {
        Scenario::load(&format!("{HEAD}{checks}"), "t.yaml")
    }

    #[test]
    fn checks_name_one_operation_and_an_executable_from() {
        let s = load(
            "  - {pod: x/a, read: /srv/pal/h1/secret.txt, from: /srv/pal/h1/bin/cat, user: 1000, event: block, expect: denied}\n  - {pod: x/a, exec: /bin/true, expect: allowed}\n",
        )
        .unwrap();
        assert_eq!(s.fixtures.len(), 3);
        assert_eq!(
            s.cluster.namespaces["x"].annotations["kubearmor-file-posture"],
            "block"
        );
        let Some(Action::Check(checks)) = s.actions.last() else {
            unreachable!()
        };
        assert_eq!(
            checks[0].operation,
            Operation::Read("/srv/pal/h1/secret.txt".into())
        );
        assert_eq!(checks[0].user, Some(1000));
        assert_eq!(checks[1].operation, Operation::Exec("/bin/true".into()));
        // The first check is on line 10.
        for (bad, says) in [
            ("{pod: x/a, expect: allowed}", "has none"),
            (
                "{pod: x/a, read: /srv/pal/h1/secret.txt, unlink: /srv/pal/h1/secret.txt, expect: denied}",
                "read, unlink",
            ),
            (
                "{pod: x/a, read: /srv/pal/h1/secret.txt, from: /srv/pal/h1/plain.txt, expect: denied}",
                "executable: true",
            ),
            (
                "{pod: x/a, run: [/bin/true], from: /srv/pal/h1/bin/cat, expect: allowed}",
                "not run",
            ),
            (
                "{pod: x/a, run: [/bin/true], event: none, expect: allowed}",
                "not run",
            ),
            (
                "{pod: x/a, unlink: /etc/passwd, expect: denied}",
                "not below /srv/pal/",
            ),
            ("{pod: x/a, read: relative, expect: denied}", "absolute"),
            (
                "{pod: x/b, read: /srv/pal/h1/secret.txt, expect: denied}",
                "no pod x/b",
            ),
        ] {
            let e = load(&format!("  - {bad}\n")).err().unwrap();
            assert_eq!(e.line, 10, "{bad}: {e}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
        let e =
            load("  - {pod: x/a, read: /srv/pal/h1/secret.txt, event: blocked, expect: denied}\n")
                .err()
                .unwrap();
        assert!(e.message.contains("blocked"), "{e}");
    }

    #[test]
    fn a_bad_fixture_is_invalid_input_naming_its_line() {
        let head = format!("{HEAD}  - {{pod: x/a, exec: /bin/true, expect: allowed}}\n");
        let text = head.replace("/srv/pal/h1/plain.txt", "/etc/plain.txt");
        let e = Scenario::load(&text, "t.yaml").err().unwrap();
        assert_eq!(e.line, 8, "{e}");
        assert!(
            e.message.contains("files[2]") && e.message.contains("/srv/pal/"),
            "{e}"
        );
        let text = head.replace("mode: \"0640\"", "mode: \"0648\"");
        let e = Scenario::load(&text, "t.yaml").err().unwrap();
        assert_eq!(e.line, 6, "{e}");
    }
}
