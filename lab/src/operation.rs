//! One check's operation, in a process inside the pod: a child of the
//! runner joins the pod's cgroup (its pid into `cgroup.procs`), then its
//! network namespace, then takes the check's uid and gid, and only then
//! does the operation itself, calls execve(2) on the exec target, or
//! starts the `from:` executable (a helper copy, which does the operation).
//! Every step reports its errno to the runner through a close-on-exec
//! pipe, so the verdict rests on the operation's own errno, never on text.

use std::{
    ffi::CString,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    ptr,
    time::{Duration, Instant},
};

use crate::{
    helper::{self, FileOp, HELPER_ARG, Verdict, errno_name},
    plan::Operation,
};

/// How long an operation (and the exec target it starts) may take.
const LIMIT: Duration = Duration::from_secs(10);

/// Where a child stopped, as it reports it to the runner.
const STAGE_CGROUP: i32 = 1;
const STAGE_NETNS: i32 = 2;
const STAGE_USER: i32 = 3;
/// The operation's own system call (errno 0: it succeeded).
const STAGE_OPERATION: i32 = 4;
/// execve(2) of the `from:` executable.
const STAGE_FROM: i32 = 5;

/// The pod a check runs in.
pub struct PodJoin<'a> {
    /// The pod's cgroup v2 directory.
    pub cgroup: &'a Path,
    /// A descriptor of the pod's network namespace.
    pub netns: RawFd,
    /// uid and gid, when not root.
    pub user: Option<u32>,
}

/// What the child does once it is in the pod.
enum Then {
    /// A file operation, in the child itself.
    File(FileOp, CString),
    /// execve(2): the exec target (an `exec` check without `from:`), or the
    /// `from:` executable with the operation as its arguments.
    Execve {
        path: CString,
        argv: Vec<CString>,
        from: bool,
    },
}

fn c_string(bytes: &[u8]) -> Result<CString, Verdict> {
    CString::new(bytes).map_err(|_| Verdict::Failed("a path contains NUL".into()))
}

fn c_path(path: &Path) -> Result<CString, Verdict> {
    c_string(path.as_os_str().as_bytes())
}

/// Runs `operation` inside the pod, performed by `from` (a helper copy)
/// when given, and judges it.
pub fn run_operation(pod: &PodJoin, operation: &Operation, from: Option<&Path>) -> Verdict {
    match prepare(operation, from).and_then(|then| fork_into_pod(pod, &then)) {
        Ok(v) | Err(v) => v,
    }
}

fn prepare(operation: &Operation, from: Option<&Path>) -> Result<Then, Verdict> {
    let (op, path) = match operation {
        Operation::Run(_) => {
            return Err(Verdict::Failed(
                "run: is not an operation of the helper".into(),
            ));
        }
        Operation::Exec(p) => ("exec", p),
        Operation::Read(p) => ("read", p),
        Operation::Write(p) => ("write", p),
        Operation::Unlink(p) => ("unlink", p),
    };
    let target = c_path(path)?;
    Ok(match (from, op) {
        (Some(from), _) => {
            let exe = c_path(from)?;
            Then::Execve {
                argv: vec![
                    exe.clone(),
                    c_string(HELPER_ARG.as_bytes())?,
                    c_string(op.as_bytes())?,
                    target,
                ],
                path: exe,
                from: true,
            }
        }
        (None, "exec") => Then::Execve {
            argv: helper::noop_argv(&target),
            path: target,
            from: false,
        },
        (None, "read") => Then::File(FileOp::Read, target),
        (None, "write") => Then::File(FileOp::Write, target),
        (None, _) => Then::File(FileOp::Unlink, target),
    })
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Verdict> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which we then own.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(Verdict::Failed(format!(
                "pipe: {}",
                errno_name(last_errno())
            )));
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Everything the child touches, made before the fork.
struct Child<'a> {
    procs: CString,
    netns: RawFd,
    user: Option<u32>,
    then: &'a Then,
    argv: Vec<*const libc::c_char>,
    report: RawFd,
    stdin: RawFd,
    output: RawFd,
}

impl Child<'_> {
    /// Reports where it stopped and exits.
    fn report(&self, stage: i32, errno: i32) -> ! {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&stage.to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: async-signal-safe calls on our own buffer.
        unsafe {
            libc::write(self.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(0)
        }
    }

    /// Between fork and exec: async-signal-safe system calls only, on
    /// memory prepared before the fork.
    fn run(&self) -> ! {
        // SAFETY: see above; every pointer is into memory owned by the
        // parent's stack frame, which the fork copied.
        unsafe {
            libc::dup2(self.stdin, 0);
            libc::dup2(self.output, 1);
            libc::dup2(self.output, 2);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                self.report(STAGE_CGROUP, last_errno());
            }
            libc::close(fd);
            if libc::setns(self.netns, libc::CLONE_NEWNET) != 0 {
                self.report(STAGE_NETNS, last_errno());
            }
            if let Some(id) = self.user
                && (libc::setgroups(0, ptr::null()) != 0
                    || libc::setgid(id) != 0
                    || libc::setuid(id) != 0)
            {
                self.report(STAGE_USER, last_errno());
            }
            match self.then {
                Then::File(op, path) => self.report(STAGE_OPERATION, helper::perform(*op, path)),
                Then::Execve { path, from, .. } => {
                    let envp: [*const libc::c_char; 1] = [ptr::null()];
                    libc::execve(path.as_ptr(), self.argv.as_ptr(), envp.as_ptr());
                    let stage = if *from { STAGE_FROM } else { STAGE_OPERATION };
                    self.report(stage, last_errno())
                }
            }
        }
    }
}

fn fork_into_pod(pod: &PodJoin, then: &Then) -> Result<Verdict, Verdict> {
    let procs = c_path(&pod.cgroup.join("cgroup.procs"))?;
    let (report_r, report_w) = pipe()?;
    let (output_r, output_w) = pipe()?;
    let (stdin_r, stdin_w) = pipe()?;
    let argv = match then {
        Then::Execve { argv, .. } => helper::pointers(argv),
        Then::File(..) => Vec::new(),
    };
    let child = Child {
        procs,
        netns: pod.netns,
        user: pod.user,
        then,
        argv,
        report: report_w.as_raw_fd(),
        stdin: stdin_r.as_raw_fd(),
        output: output_w.as_raw_fd(),
    };
    // SAFETY: the child runs `Child::run`, which makes async-signal-safe
    // calls only and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Verdict::Failed(format!(
            "fork: {}",
            errno_name(last_errno())
        )));
    }
    if pid == 0 {
        child.run();
    }
    drop((report_w, output_w, stdin_r, stdin_w));
    // Until the child execs (the pipe closes) or reports.
    let mut msg = Vec::new();
    let _ = std::fs::File::from(report_r).read_to_end(&mut msg);
    let status = wait(pid);
    let mut output = String::new();
    let _ = std::fs::File::from(output_r).read_to_string(&mut output);
    Ok(judge(&msg, status, &output, then))
}

/// How the child ended: `Ok(exit status)`, or why it has none.
fn wait(pid: libc::pid_t) -> Result<i32, String> {
    let deadline = Instant::now() + LIMIT;
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 && last_errno() != libc::EINTR {
            return Err(format!("waitpid: {}", errno_name(last_errno())));
        }
        if Instant::now() >= deadline {
            // SAFETY: our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!("it did not finish within {LIMIT:?} and was killed"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(format!(
            "it was killed by signal {}",
            libc::WTERMSIG(status)
        ))
    }
}

/// The verdict from the child's report (`msg`, empty when it exec'd), its
/// end and what it printed.
fn judge(msg: &[u8], status: Result<i32, String>, output: &str, then: &Then) -> Verdict {
    let word = |i: usize| {
        msg.get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_ne_bytes)
    };
    if let (Some(stage), Some(errno)) = (word(0), word(1)) {
        let name = || errno_name(errno);
        return match stage {
            STAGE_OPERATION => helper::verdict_of_errno(errno),
            STAGE_CGROUP => Verdict::Failed(format!("joining the pod's cgroup: {}", name())),
            STAGE_NETNS => Verdict::Failed(format!("joining the pod's netns: {}", name())),
            STAGE_USER => Verdict::Failed(format!("taking the check's uid/gid: {}", name())),
            STAGE_FROM if matches!(errno, libc::EPERM | libc::EACCES) => Verdict::Failed(format!(
                "starting the from: executable was itself denied ({}), so the operation never ran",
                name()
            )),
            _ => Verdict::Failed(format!("starting the from: executable: {}", name())),
        };
    }
    match (then, status) {
        (_, Err(e)) => Verdict::Failed(e),
        // The exec target started: execve(2) succeeded.
        (Then::Execve { from: false, .. }, Ok(_)) => Verdict::Allowed,
        (Then::Execve { from: true, .. }, Ok(code)) => helper::verdict_of_exit(code, output),
        (Then::File(..), Ok(code)) => Verdict::Failed(format!(
            "the child exited ({code}) without reporting its operation"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_judged_by_stage_and_errno() {
        let file = Then::File(FileOp::Read, c"/x".into());
        let msg = |stage: i32, errno: i32| {
            let mut m = stage.to_ne_bytes().to_vec();
            m.extend(errno.to_ne_bytes());
            m
        };
        let j = |m: Vec<u8>| judge(&m, Ok(0), "", &file);
        assert_eq!(j(msg(STAGE_OPERATION, 0)), Verdict::Allowed);
        assert_eq!(j(msg(STAGE_OPERATION, libc::EPERM)), Verdict::Denied);
        assert_eq!(j(msg(STAGE_OPERATION, libc::EACCES)), Verdict::Denied);
        assert!(matches!(
            j(msg(STAGE_OPERATION, libc::ENOENT)),
            Verdict::Failed(_)
        ));
        // Denied anywhere but the operation itself is no denial.
        assert!(matches!(
            j(msg(STAGE_CGROUP, libc::EACCES)),
            Verdict::Failed(_)
        ));
        assert!(
            matches!(j(msg(STAGE_FROM, libc::EPERM)), Verdict::Failed(m) if m.contains("itself denied"))
        );
        let from = Then::Execve {
            path: c"/srv/pal/cat".into(),
            argv: Vec::new(),
            from: true,
        };
        assert_eq!(judge(&[], Ok(10), "", &from), Verdict::Denied);
        assert!(
            matches!(judge(&[], Ok(12), "ENOENT", &from), Verdict::Failed(m) if m.contains("ENOENT"))
        );
        assert!(matches!(
            judge(&[], Err("killed by signal 11".into()), "", &from),
            Verdict::Failed(_)
        ));
        let exec = Then::Execve {
            path: c"/srv/pal/ls".into(),
            argv: Vec::new(),
            from: false,
        };
        assert_eq!(judge(&[], Ok(3), "", &exec), Verdict::Allowed);
    }
}

/// Natively, as root: the operation really runs in the pod's cgroup,
/// network namespace and uid, and its errno decides.
#[cfg(test)]
mod privileged {
    use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf};

    use super::*;
    use crate::{netns::Netns, topology::cgroup2_root};

    struct Cleanup(Vec<PathBuf>);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in self.0.iter().rev() {
                let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_dir(p));
            }
        }
    }

    #[test]
    fn operations_run_inside_the_pod_and_are_judged_on_errno() {
        let (true, Some(root)) = (nix::unistd::geteuid().is_root(), cgroup2_root()) else {
            eprintln!("skipped: needs root and a cgroup v2 hierarchy");
            return;
        };
        let id = std::process::id();
        let cgroup = root.join(format!("palisade-optest-{id}"));
        let dir = std::env::temp_dir().join(format!("palisade-optest-{id}"));
        let _cleanup = Cleanup(vec![dir.clone(), cgroup.clone()]);
        fs::create_dir(&cgroup).unwrap();
        fs::create_dir(&dir).unwrap();
        // Sticky and world-writable, like /tmp: uid 1000 may not unlink
        // root's files there (EPERM).
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        let netns = Netns::new("optest").unwrap();
        let secret = dir.join("secret");
        fs::write(&secret, "s\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let pod = |user| PodJoin {
            cgroup: &cgroup,
            netns: netns.fd(),
            user,
        };

        // A from: program that says where it ran.
        let out = dir.join("out");
        let from = dir.join("from.sh");
        fs::write(
            &from,
            format!(
                "#!/bin/sh\n{{ cat /proc/self/cgroup; readlink /proc/self/ns/net; id -u; echo \"$@\"; }} > {}\n",
                out.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&from, fs::Permissions::from_mode(0o755)).unwrap();
        let read = Operation::Read(secret.clone());
        assert_eq!(
            run_operation(&pod(Some(1000)), &read, Some(&from)),
            Verdict::Allowed
        );
        let seen = fs::read_to_string(&out).unwrap();
        let relative = cgroup.strip_prefix(&root).unwrap().display().to_string();
        assert!(seen.contains(&format!("0::/{relative}\n")), "{seen}");
        let ns = fs::read_link(netns.path()).unwrap();
        assert!(seen.contains(&format!("{}\n", ns.display())), "{seen}");
        assert!(seen.contains("\n1000\n"), "{seen}");
        assert!(
            seen.contains(&format!("__palisade-check read {}", secret.display())),
            "{seen}"
        );

        // The child itself, by errno.
        assert_eq!(run_operation(&pod(None), &read, None), Verdict::Allowed);
        assert_eq!(
            run_operation(&pod(Some(1000)), &read, None),
            Verdict::Denied,
            "EACCES"
        );
        let unlink = Operation::Unlink(secret.clone());
        assert_eq!(
            run_operation(&pod(Some(1000)), &unlink, None),
            Verdict::Denied,
            "EPERM"
        );
        assert_eq!(run_operation(&pod(None), &unlink, None), Verdict::Allowed);
        assert!(
            matches!(run_operation(&pod(None), &unlink, None), Verdict::Failed(m) if m.contains("ENOENT"))
        );
        let exec = Operation::Exec(from.clone());
        assert_eq!(run_operation(&pod(None), &exec, None), Verdict::Allowed);
        let missing = Operation::Exec(dir.join("missing"));
        assert!(matches!(
            run_operation(&pod(None), &missing, None),
            Verdict::Failed(_)
        ));
        // A from: program that cannot start is no verdict on the operation.
        fs::set_permissions(&from, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(
            matches!(run_operation(&pod(Some(1000)), &read, Some(&from)), Verdict::Failed(m) if m.contains("itself denied"))
        );
        // A pod that cannot be joined is a failure, never a denial.
        let gone = PodJoin {
            cgroup: &dir,
            netns: netns.fd(),
            user: None,
        };
        assert!(
            matches!(run_operation(&gone, &read, None), Verdict::Failed(m) if m.contains("cgroup"))
        );
    }
}
