//! One shutdown signal for the whole process.
//!
//! Every long-running task holds a clone of [`Shutdown`] and stops taking new
//! work when it fires; each then drains what it has in flight within its own
//! grace period.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal.
pub type Shutdown = CancellationToken;

/// Fires `shutdown` on Ctrl-C or SIGTERM.
pub fn on_signals(shutdown: Shutdown) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
            _ = term => tracing::info!("SIGTERM received, shutting down"),
            _ = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
}
