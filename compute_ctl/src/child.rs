//! A child process compute_ctl supervises (postgres, `compute_fs`): its exit
//! status is kept once reaped, so it can be asked for again.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;
use tracing::warn;

#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    /// What it is, for logs.
    what: &'static str,
    exit: Option<ExitStatus>,
}

impl ChildProcess {
    pub fn new(child: Child, what: &'static str) -> Self {
        ChildProcess {
            child,
            what,
            exit: None,
        }
    }

    /// Its pid while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status once it exited (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// Waits until it exits.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        loop {
            match self.child.wait().await {
                Ok(status) => {
                    self.exit = Some(status);
                    return status;
                }
                Err(e) => {
                    warn!("waiting for {}: {e}", self.what);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// SIGKILL, unless it exited already; does not wait.
    pub fn start_kill(&mut self) {
        if self.try_exit().is_none() {
            if let Err(e) = self.child.start_kill() {
                warn!("killing {}: {e}", self.what);
            }
        }
    }
}
