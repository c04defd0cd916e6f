//! The enforcer's process and file decisions, from its event stream
//! (`GET /events`, lines of `"type": "lsm"`), for checks with `event:`. A
//! check's event is matched by pod, operation and path within
//! [`EVENT_WINDOW`] of the operation.

use std::{
    io::BufRead as _,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// How long after its operation a check's event may arrive.
pub const EVENT_WINDOW: Duration = Duration::from_secs(2);

/// One decision the enforcer reported (allow decisions are never events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LsmEvent {
    pub pod: String,
    /// exec, read, write or unlink.
    pub op: String,
    pub path: String,
    /// block or audit.
    pub action: String,
    pub policy: String,
}

/// What a thread reading the daemon's event stream has seen; it ends when
/// the daemon closes the stream.
pub struct LsmWatch {
    seen: Arc<Mutex<Vec<LsmEvent>>>,
}

fn parse(line: &str) -> Option<LsmEvent> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["type"] != "lsm" {
        return None;
    }
    let text = |key: &str| v[key].as_str().unwrap_or_default().to_owned();
    Some(LsmEvent {
        pod: text("pod"),
        op: text("op"),
        path: text("path"),
        action: text("action"),
        policy: text("policy"),
    })
}

impl LsmWatch {
    /// Subscribes to the daemon at `metrics`, listening inside the network
    /// namespace at `netns`. The stream is read unfiltered but for the
    /// `type=lsm` hint, which a daemon that does not know it ignores.
    pub fn start(metrics: SocketAddr, netns: &Path) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let netns = netns.to_owned();
        let (subscribed, answer) = mpsc::channel();
        std::thread::spawn(move || {
            let reader =
                match palisade::observe::client::get(metrics, Some(&netns), "/events?type=lsm") {
                    Ok(reader) => reader,
                    Err(e) => {
                        let _ = subscribed.send(Err(e));
                        return;
                    }
                };
            let _ = subscribed.send(Ok(()));
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(e) = parse(&line) {
                    into.lock().unwrap_or_else(PoisonError::into_inner).push(e);
                }
            }
        });
        answer
            .recv()
            .context("the event reader ended before it subscribed")??;
        Ok(Self { seen })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<LsmEvent>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where an operation's events begin.
    pub fn mark(&self) -> usize {
        self.seen().len()
    }

    /// The first event since `since` for `pod`'s `op` on one of `paths`.
    pub fn find(&self, since: usize, pod: &str, op: &str, paths: &[String]) -> Option<LsmEvent> {
        self.seen()
            .get(since..)?
            .iter()
            .find(|e| e.pod == pod && e.op == op && paths.contains(&e.path))
            .cloned()
    }

    /// Waits for that event until `deadline`.
    pub async fn wait(
        &self,
        since: usize,
        pod: &str,
        op: &str,
        paths: &[String],
        deadline: Instant,
    ) -> Option<LsmEvent> {
        loop {
            let found = self.find(since, pod, op, paths);
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"type":"lsm","time":"t","pod":"x/a","cgroup":123,"pid":42,"exe":"/srv/pal/h1/bin/cat","path":"/srv/pal/h1/secret.txt","hook":"file_open","op":"read","action":"block","policy":"kubearmor:x/p"}"#;

    #[test]
    fn lsm_lines_match_by_pod_operation_and_path() {
        let w = LsmWatch {
            seen: Arc::default(),
        };
        assert_eq!(parse(r#"{"type":"event","verdict":"dropped"}"#), None);
        assert_eq!(parse("not json"), None);
        w.seen().push(parse(LINE).unwrap());
        let paths = ["/srv/pal/h1/secret.txt".to_owned()];
        let e = w.find(0, "x/a", "read", &paths).unwrap();
        assert_eq!(
            (e.action.as_str(), e.policy.as_str()),
            ("block", "kubearmor:x/p")
        );
        assert_eq!(w.find(0, "x/b", "read", &paths), None);
        assert_eq!(w.find(0, "x/a", "write", &paths), None);
        assert_eq!(
            w.find(0, "x/a", "read", &["/srv/pal/h1/other".into()]),
            None
        );
        assert_eq!(w.find(1, "x/a", "read", &paths), None, "before the mark");
    }
}
