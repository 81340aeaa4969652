//! Shutdown on SIGTERM or SIGINT.
//!
//! The handlers are installed by [`Signals::install`] before any work starts (a signal that
//! arrives earlier ends the process as the default action would); the first of the two
//! signals is logged (`SIGTERM received` / `SIGINT received`) and ends the wait.

use thiserror::Error;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The signal handlers could not be installed.
#[derive(Debug, Error)]
#[error("cannot install the signal handlers: {0}")]
pub struct SignalError(#[from] std::io::Error);

/// Installed SIGTERM and SIGINT handlers.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers (inside a Tokio runtime).
    pub fn install() -> Result<Signals, SignalError> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the first SIGTERM or SIGINT and logs which one came.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
    }

    /// A token cancelled at the first SIGTERM or SIGINT (the wait runs in a task).
    pub fn cancel_on_signal(self) -> CancellationToken {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            self.recv().await;
            on_signal.cancel();
        });
        cancel
    }
}

/// Installs the handlers and returns a token cancelled at the first SIGTERM or SIGINT.
pub fn cancel_on_signal() -> Result<CancellationToken, SignalError> {
    Ok(Signals::install()?.cancel_on_signal())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let cancel = cancel_on_signal().expect("handlers");
        assert!(!cancel.is_cancelled());
        // SAFETY-free: std has no kill(2); the process signals itself through `kill`.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("cancelled within 5 s");
    }
}
