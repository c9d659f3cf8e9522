//! The local stack's child processes (moto, `cargo lambda watch`, the function, the tools).
//!
//! Invariants: every child runs in its own process group (its pid is the group id), so a
//! stop reaches whatever it spawned too, and a Ctrl-C in the terminal reaches only the owner
//! (the demo, a test), which then stops its children in order. On Linux every child also gets
//! SIGTERM when its owner dies (`PR_SET_PDEATHSIG`). A task per child reaps it as soon as it
//! exits, so a stopped child leaves no zombie behind.
//!
//! Why our own code on `tokio::process` and `libc` rather than a supervision crate: the
//! well-kept ones (`process-wrap`, `command-group`) give process groups and kill-on-drop, but
//! not the parent-death signal nor an exit that many owners can watch at once (the demo's live
//! line, its readiness checks and its shutdown all look at the same child); this is ~150 lines.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// Waiting for it failed; it is gone as far as we can tell.
    Unknown,
}

impl Exit {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    fn from_status(status: std::io::Result<std::process::ExitStatus>) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Unknown,
            },
            Err(_) => Exit::Unknown,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "signal {signal}"),
            Exit::Unknown => write!(f, "unknown exit"),
        }
    }
}

/// One child, as seen by its owner: its name, pid (= process group) and exit.
#[derive(Clone, Debug)]
pub struct Handle {
    /// A short name for messages ("moto", "starter-1", ...).
    pub name: String,
    /// The pid, which is also the process group id.
    pub pid: u32,
    status: watch::Receiver<Option<Exit>>,
}

impl Handle {
    /// The exit, if the child has ended (and been reaped).
    pub fn exit(&self) -> Option<Exit> {
        *self.status.borrow()
    }

    /// Waits at most `timeout` for the child to end.
    pub async fn wait(&self, timeout: Duration) -> Option<Exit> {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(timeout, async {
            // An error means the reaper is gone (runtime shutting down): report what we know.
            status.wait_for(Option::is_some).await.map(|exit| *exit).ok().flatten()
        })
        .await;
        match waited {
            Ok(Some(exit)) => Some(exit),
            _ => self.exit(),
        }
    }
}

/// What the report records of a child.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Its name.
    pub name: String,
    /// Its pid (= process group id).
    pub pid: u32,
    /// How it ended; `None` if it was still running when recorded.
    pub exit: Option<Exit>,
}

/// The pipes of a child that asked for them (`Stdio::piped()`).
#[derive(Debug, Default)]
pub struct Pipes {
    /// Its stdin.
    pub stdin: Option<ChildStdin>,
    /// Its stdout.
    pub stdout: Option<ChildStdout>,
}

/// The set of children. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct Supervisor {
    children: Mutex<Vec<Handle>>,
}

/// Sends `signal` to the process group `pgid`; a group that is gone is not an error.
fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg only sends a signal; an unknown group gives ESRCH, which we ignore.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

impl Supervisor {
    /// A supervisor with no children.
    pub fn new() -> Arc<Supervisor> {
        Arc::new(Supervisor::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Handle>> {
        self.children.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns `command` as a new process group and starts reaping it. Returns its handle and
    /// the pipes it asked for.
    pub fn spawn(&self, name: &str, mut command: Command) -> std::io::Result<(Handle, Pipes)> {
        command.process_group(0).kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs between fork and exec and calls only prctl, which is
        // async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other(format!("{name}: no pid right after spawn")))?;
        let pipes = Pipes {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
        };
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let exit = Exit::from_status(child.wait().await);
            let _ = tx.send(Some(exit));
        });
        let handle = Handle {
            name: name.to_string(),
            pid,
            status: rx,
        };
        self.lock().push(handle.clone());
        Ok((handle, pipes))
    }

    /// Every child spawned so far, with its exit if it has ended.
    pub fn records(&self) -> Vec<ProcessRecord> {
        self.lock()
            .iter()
            .map(|h| ProcessRecord {
                name: h.name.clone(),
                pid: h.pid,
                exit: h.exit(),
            })
            .collect()
    }

    /// Stops the given children: SIGTERM to each group, at most `grace` to end, then SIGKILL.
    /// Returns once every one has been reaped (or after a few more seconds at worst).
    pub async fn stop(&self, handles: &[Handle], grace: Duration) {
        for h in handles.iter().filter(|h| h.exit().is_none()) {
            signal_group(h.pid, libc::SIGTERM);
        }
        futures::future::join_all(handles.iter().map(|h| h.wait(grace))).await;
        for h in handles {
            // Also reaches what a child left behind in its group after it ended.
            signal_group(h.pid, libc::SIGKILL);
        }
        futures::future::join_all(handles.iter().map(|h| h.wait(Duration::from_secs(5)))).await;
    }

    /// Stops every child still running (all at once, `grace` for each).
    pub async fn stop_all(&self, grace: Duration) {
        let handles: Vec<Handle> = self.lock().clone();
        self.stop(&handles, grace).await;
    }

    /// Children that have not ended.
    pub fn running(&self) -> Vec<Handle> {
        self.lock().iter().filter(|h| h.exit().is_none()).cloned().collect()
    }
}

impl Drop for Supervisor {
    /// The last resort (a panic, an early return): SIGKILL every group.
    fn drop(&mut self) {
        for h in self.lock().iter() {
            signal_group(h.pid, libc::SIGKILL);
        }
    }
}
