//! A scenario's `files:` on disk: made before its first step, put back to
//! exactly their declared state before each check (content, owner, mode; an
//! unlinked file is made again), and removed after it. All of it from the
//! runner's own process, outside every pod, so no rule applies to it.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown, symlink},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::plan::{Fixture, FixtureKind};

/// The fixtures of one scenario while it runs; dropped, they are removed.
pub struct FixtureFiles {
    fixtures: Vec<Fixture>,
    /// The check helper that executable fixtures copy.
    helper: PathBuf,
    /// Directories this runner made (fixtures and their parents), in order.
    made_dirs: Vec<PathBuf>,
    /// Each executable's (inode, size, mtime) as copied, to tell when it
    /// needs copying again (the copy is large; its content never changes
    /// unless a check wrote to it).
    copied: Vec<(PathBuf, (u64, u64, i64, i64))>,
}

fn stamp(meta: &fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec())
}

impl FixtureFiles {
    /// Makes every fixture; `helper` is the binary executables copy.
    pub fn make(fixtures: &[Fixture], helper: &Path) -> anyhow::Result<Self> {
        let mut files = Self {
            fixtures: fixtures.to_vec(),
            helper: helper.to_owned(),
            made_dirs: Vec::new(),
            copied: Vec::new(),
        };
        files.restore()?;
        Ok(files)
    }

    /// Puts every fixture back as declared.
    pub fn restore(&mut self) -> anyhow::Result<()> {
        for f in self.fixtures.clone() {
            self.restore_one(&f)
                .with_context(|| format!("fixture {}", f.path.display()))?;
        }
        Ok(())
    }

    /// `dir` and its missing parents, remembering those this made.
    fn make_dirs(&mut self, dir: &Path) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(d) = at {
            if d.symlink_metadata().is_ok() {
                break;
            }
            missing.push(d.to_owned());
            at = d.parent();
        }
        for d in missing.into_iter().rev() {
            fs::create_dir(&d).with_context(|| format!("making {}", d.display()))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
            self.made_dirs.push(d);
        }
        Ok(())
    }

    fn restore_one(&mut self, f: &Fixture) -> anyhow::Result<()> {
        if let Some(parent) = f.path.parent() {
            self.make_dirs(parent)?;
        }
        let current = f.path.symlink_metadata();
        match &f.kind {
            FixtureKind::Directory => {
                if !current.as_ref().is_ok_and(fs::Metadata::is_dir) {
                    remove_any(&f.path)?;
                    self.make_dirs(&f.path)?;
                }
            }
            FixtureKind::Link(target) => {
                let same = fs::read_link(&f.path).is_ok_and(|t| t == *target);
                if !same {
                    remove_any(&f.path)?;
                    symlink(target, &f.path)?;
                }
                return Ok(());
            }
            FixtureKind::File(content) => {
                if !current.as_ref().is_ok_and(fs::Metadata::is_file) {
                    remove_any(&f.path)?;
                }
                fs::write(&f.path, content)?;
            }
            FixtureKind::Executable => {
                let known = self
                    .copied
                    .iter()
                    .find(|(p, _)| *p == f.path)
                    .map(|(_, s)| *s);
                let intact = current
                    .as_ref()
                    .is_ok_and(|m| m.is_file() && Some(stamp(m)) == known);
                if !intact {
                    remove_any(&f.path)?;
                    fs::copy(&self.helper, &f.path).with_context(|| {
                        format!("copying the check helper {}", self.helper.display())
                    })?;
                    let meta = f.path.symlink_metadata()?;
                    self.copied.retain(|(p, _)| *p != f.path);
                    self.copied.push((f.path.clone(), stamp(&meta)));
                }
            }
        }
        chown(&f.path, Some(f.owner), Some(f.owner))?;
        fs::set_permissions(&f.path, fs::Permissions::from_mode(f.mode))?;
        Ok(())
    }
}

/// Removes whatever is at `path`, if anything.
fn remove_any(path: &Path) -> std::io::Result<()> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl Drop for FixtureFiles {
    fn drop(&mut self) {
        for f in self.fixtures.iter().rev() {
            let _ = remove_any(&f.path);
        }
        for d in self.made_dirs.iter().rev() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixtures below a directory of the test's own (`/srv/pal/` is the
    /// planner's rule; this type takes any path).
    #[test]
    fn fixtures_are_made_restored_and_removed() {
        let base = std::env::temp_dir().join(format!("palisade-fixtures-{}", std::process::id()));
        let fixture = |path: &str, kind: FixtureKind, mode: u32| Fixture {
            path: base.join(path),
            kind,
            owner: nix::unistd::geteuid().as_raw(),
            mode,
        };
        let helper = base.with_extension("helper");
        fs::write(&helper, "#!/bin/sh\n").unwrap();
        let list = vec![
            fixture("h1/secret.txt", FixtureKind::File("s3cret\n".into()), 0o640),
            fixture("h1/dir1", FixtureKind::Directory, 0o700),
            fixture("h1/bin/cat", FixtureKind::Executable, 0o755),
            fixture(
                "h1/link",
                FixtureKind::Link(base.join("h1/secret.txt")),
                0o755,
            ),
        ];
        let mut files = FixtureFiles::make(&list, &helper).unwrap();
        let secret = base.join("h1/secret.txt");
        let mode = |p: &Path| p.symlink_metadata().unwrap().mode() & 0o7777;
        assert_eq!(fs::read_to_string(&secret).unwrap(), "s3cret\n");
        assert_eq!(mode(&secret), 0o640);
        assert_eq!(mode(&base.join("h1/dir1")), 0o700);
        assert_eq!(
            fs::read_to_string(base.join("h1/bin/cat")).unwrap(),
            "#!/bin/sh\n"
        );
        assert_eq!(
            fs::read_to_string(base.join("h1/link")).unwrap(),
            "s3cret\n"
        );

        // What checks may do: append, unlink, chmod.
        fs::write(&secret, "changed").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(base.join("h1/link")).unwrap();
        fs::write(base.join("h1/bin/cat"), "overwritten").unwrap();
        files.restore().unwrap();
        assert_eq!(fs::read_to_string(&secret).unwrap(), "s3cret\n");
        assert_eq!(mode(&secret), 0o640);
        assert_eq!(
            fs::read_to_string(base.join("h1/link")).unwrap(),
            "s3cret\n"
        );
        assert_eq!(
            fs::read_to_string(base.join("h1/bin/cat")).unwrap(),
            "#!/bin/sh\n"
        );

        drop(files);
        assert!(!base.exists(), "the directories the runner made are gone");
        fs::remove_file(&helper).unwrap();
    }
}
