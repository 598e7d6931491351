//! The signals that stop a long-running command.

use std::future::Future;

/// Completes on Ctrl-C (SIGINT) or, on unix, SIGTERM (what `kill`, systemd and container
/// runtimes send), so the command can close its connections and exit 0 either way.
///
/// On unix the handlers are installed when this is called, not when the future is first
/// polled: a signal that arrives while the command is still connecting is not lost (and does
/// not kill the process). Call it inside the runtime.
pub(crate) fn stop() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt()).and_then(|interrupt| {
            signal(SignalKind::terminate()).map(|terminate| (interrupt, terminate))
        })
    };
    async move {
        #[cfg(unix)]
        if let Ok((mut interrupt, mut terminate)) = handlers {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
