//! The check helper: the `palisade` binary itself, started as
//! `<copy> __palisade-check <op> <path>` (the CLI dispatches on argv[1]
//! before anything else runs, so a copy of the binary under any name
//! works). It performs exactly one operation and reports the operation's
//! own errno through its exit status; between its start and the operation
//! it opens nothing (the guest's binary is static, with no loader).
//!
//! The operations are plain system calls on memory prepared beforehand, so
//! the runner's forked child can run the same functions between fork and
//! exec (they are async-signal-safe).

use std::{
    ffi::{CStr, CString, OsString},
    os::unix::ffi::OsStringExt as _,
    ptr,
};

/// argv[1] that makes the binary the check helper.
pub const HELPER_ARG: &str = "__palisade-check";

/// Exit statuses of the helper: the operation's errno, folded.
pub const EXIT_OK: u8 = 0;
pub const EXIT_EPERM: u8 = 10;
pub const EXIT_EACCES: u8 = 11;
/// Any other errno; its name is on stderr.
pub const EXIT_OTHER: u8 = 12;
/// Bad arguments: nothing was attempted.
pub const EXIT_USAGE: u8 = 20;

/// The line a `write` appends.
const LINE: &[u8] = b"palisade check\n";

/// What a check's operation came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The operation's own system call failed with EPERM or EACCES.
    Denied,
    /// Anything else: another errno, a crash, a helper that did not run.
    Failed(String),
}

/// An errno's symbolic name (`ENOENT`).
pub fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}

/// The exit status that reports `errno` (0: the operation succeeded).
pub fn exit_status(errno: i32) -> u8 {
    match errno {
        0 => EXIT_OK,
        libc::EPERM => EXIT_EPERM,
        libc::EACCES => EXIT_EACCES,
        _ => EXIT_OTHER,
    }
}

/// The verdict on an operation's errno (0: it succeeded).
pub fn verdict_of_errno(errno: i32) -> Verdict {
    match errno {
        0 => Verdict::Allowed,
        libc::EPERM | libc::EACCES => Verdict::Denied,
        e => Verdict::Failed(format!(
            "{} ({})",
            errno_name(e),
            nix::errno::Errno::from_raw(e).desc()
        )),
    }
}

/// The verdict on the helper's exit status; `stderr` explains failures.
pub fn verdict_of_exit(status: i32, stderr: &str) -> Verdict {
    let said = || {
        let s = stderr.trim();
        if s.is_empty() {
            String::new()
        } else {
            format!(": {s}")
        }
    };
    match u8::try_from(status) {
        Ok(EXIT_OK) => Verdict::Allowed,
        Ok(EXIT_EPERM | EXIT_EACCES) => Verdict::Denied,
        Ok(EXIT_OTHER) => Verdict::Failed(format!("the operation failed{}", said())),
        Ok(EXIT_USAGE) => Verdict::Failed(format!("the helper refused its arguments{}", said())),
        _ => Verdict::Failed(format!("the helper exited with status {status}{}", said())),
    }
}

/// The calling thread's errno.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The operations the helper and the runner's child perform themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    Read,
    Write,
    Unlink,
}

/// Performs `op` on `path`; the errno of the call that failed, or 0.
/// Async-signal-safe: system calls on the caller's memory and the stack.
pub fn perform(op: FileOp, path: &CStr) -> i32 {
    // SAFETY: `path` is a valid C string; the buffers are ours.
    unsafe {
        match op {
            FileOp::Unlink => {
                if libc::unlink(path.as_ptr()) == 0 {
                    0
                } else {
                    errno()
                }
            }
            FileOp::Read | FileOp::Write => {
                let flags = if op == FileOp::Read {
                    libc::O_RDONLY
                } else {
                    libc::O_WRONLY | libc::O_APPEND
                };
                let fd = libc::open(path.as_ptr(), flags | libc::O_CLOEXEC);
                if fd < 0 {
                    return errno();
                }
                let mut buf = [0u8; 512];
                let n = if op == FileOp::Read {
                    libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
                } else {
                    libc::write(fd, LINE.as_ptr().cast(), LINE.len())
                };
                let e = if n < 0 { errno() } else { 0 };
                libc::close(fd);
                e
            }
        }
    }
}

/// An argv or envp for execve(2): pointers into `strings`, NUL-terminated.
/// Build it before a fork; `strings` must outlive it.
pub fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([ptr::null()])
        .collect()
}

/// The argv a check's exec target gets: it is a helper copy told to exit
/// at once (`noop`).
pub fn noop_argv(path: &CStr) -> Vec<CString> {
    vec![
        path.to_owned(),
        CString::from(c"__palisade-check"),
        CString::from(c"noop"),
    ]
}

/// execve(2) of `path` in a child of this process (which stays the
/// executable that calls it, as KubeArmor's `fromSource` sees it); the
/// execve's errno, or 0 when the program started.
fn exec_in_child(path: &CStr) -> i32 {
    let argv = noop_argv(path);
    let argv_ptrs = pointers(&argv);
    let envp: [*const libc::c_char; 1] = [ptr::null()];
    let mut fds = [0; 2];
    // SAFETY: plain system calls; the child runs only async-signal-safe
    // ones (execve, write, _exit) on memory prepared before the fork.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return errno();
        }
        match libc::fork() {
            -1 => errno(),
            0 => {
                libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr());
                let e = errno().to_ne_bytes();
                libc::write(fds[1], e.as_ptr().cast(), e.len());
                libc::_exit(127)
            }
            child => {
                libc::close(fds[1]);
                let mut e = [0u8; 4];
                let n = loop {
                    let n = libc::read(fds[0], e.as_mut_ptr().cast(), e.len());
                    if n >= 0 || errno() != libc::EINTR {
                        break n;
                    }
                };
                libc::close(fds[0]);
                let mut status = 0;
                while libc::waitpid(child, &mut status, 0) < 0 && errno() == libc::EINTR {}
                if n == 4 { i32::from_ne_bytes(e) } else { 0 }
            }
        }
    }
}

/// The helper's entry: `None` unless argv[1] is [`HELPER_ARG`], else the
/// exit status. Call it first thing in `main`.
pub fn main() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != HELPER_ARG {
        return None;
    }
    let op = args.next();
    let path = args.next();
    let extra = args.next();
    Some(run(op, path, extra))
}

fn run(op: Option<OsString>, path: Option<OsString>, extra: Option<OsString>) -> u8 {
    let usage = || {
        eprintln!("usage: {HELPER_ARG} noop | {{read|write|unlink|exec}} PATH");
        EXIT_USAGE
    };
    if extra.is_some() {
        return usage();
    }
    let op = op.and_then(|o| o.into_string().ok());
    let (op, path) = match (op.as_deref(), path) {
        (Some("noop"), None) => return EXIT_OK,
        (Some(op), Some(path)) => (op, path),
        _ => return usage(),
    };
    let Ok(c_path) = CString::new(path.clone().into_vec()) else {
        return usage();
    };
    let errno = match op {
        "read" => perform(FileOp::Read, &c_path),
        "write" => perform(FileOp::Write, &c_path),
        "unlink" => perform(FileOp::Unlink, &c_path),
        "exec" => exec_in_child(&c_path),
        _ => return usage(),
    };
    if errno != 0 {
        eprintln!(
            "{op} {}: {} ({})",
            path.to_string_lossy(),
            errno_name(errno),
            nix::errno::Errno::from_raw(errno).desc()
        );
    }
    exit_status(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_fold_into_exit_statuses_and_back_into_verdicts() {
        for (errno, status, verdict) in [
            (0, EXIT_OK, Verdict::Allowed),
            (libc::EPERM, EXIT_EPERM, Verdict::Denied),
            (libc::EACCES, EXIT_EACCES, Verdict::Denied),
        ] {
            assert_eq!(exit_status(errno), status);
            assert_eq!(verdict_of_errno(errno), verdict);
            assert_eq!(verdict_of_exit(i32::from(status), ""), verdict);
        }
        assert_eq!(exit_status(libc::ENOENT), EXIT_OTHER);
        assert!(
            matches!(verdict_of_errno(libc::ENOENT), Verdict::Failed(m) if m.starts_with("ENOENT"))
        );
        // Whatever the helper printed, only its status decides.
        assert!(matches!(
            verdict_of_exit(i32::from(EXIT_OTHER), "read /x: Permission denied"),
            Verdict::Failed(_)
        ));
        assert!(matches!(verdict_of_exit(101, ""), Verdict::Failed(m) if m.contains("101")));
        assert!(matches!(verdict_of_exit(-1, ""), Verdict::Failed(_)));
    }

    #[test]
    fn operations_report_their_own_errno() {
        let dir = std::env::temp_dir().join(format!("palisade-helper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, "x\n").unwrap();
        let c = CString::new(file.to_str().unwrap()).unwrap();
        assert_eq!(perform(FileOp::Read, &c), 0);
        assert_eq!(perform(FileOp::Write, &c), 0);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "x\npalisade check\n"
        );
        assert_eq!(perform(FileOp::Unlink, &c), 0);
        assert_eq!(perform(FileOp::Read, &c), libc::ENOENT);
        assert_eq!(perform(FileOp::Unlink, &c), libc::ENOENT);
        assert_eq!(exec_in_child(&c), libc::ENOENT);
        // A directory cannot be opened for writing: not a denial.
        let d = CString::new(dir.to_str().unwrap()).unwrap();
        assert_eq!(perform(FileOp::Write, &d), libc::EISDIR);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(exec_in_child(c"/bin/true"), 0);
    }

    #[test]
    fn arguments_other_than_the_helper_s_are_not_its_own() {
        let s = |t: &str| Some(OsString::from(t));
        assert_eq!(run(s("noop"), None, None), EXIT_OK);
        assert_eq!(run(s("noop"), s("x"), None), EXIT_USAGE);
        assert_eq!(run(s("chmod"), s("/x"), None), EXIT_USAGE);
        assert_eq!(run(s("read"), None, None), EXIT_USAGE);
        assert_eq!(run(s("read"), s("/x"), s("y")), EXIT_USAGE);
        assert_eq!(run(s("read"), s("/nonexistent/palisade"), None), EXIT_OTHER);
    }
}
