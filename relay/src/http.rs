//! The relay's HTTP accept loop: hyper serving the axum router, with the two bounds
//! `axum::serve` does not set. A client must send its request headers within a deadline (an
//! idle or trickling socket is closed, not kept forever), and only so many connections may be
//! at the HTTP stage at once (more wait in the kernel's accept backlog). Upgraded WebSockets
//! leave this stage and are bounded by the hub's connection limit instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};

/// Bounds on the HTTP stage of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// Time a client gets to send a request's headers (also between keep-alive requests).
    pub(crate) header_timeout: Duration,
    /// Connections served at the HTTP stage at once.
    pub(crate) max_connections: usize,
    /// Time in-flight HTTP requests get to finish at shutdown.
    pub(crate) drain_timeout: Duration,
}

/// What the HTTP stage did, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct HttpStats {
    /// Connections at the HTTP stage now.
    pub(crate) open: AtomicUsize,
    /// TCP connections accepted.
    pub(crate) accepted: AtomicU64,
    /// Connections closed because their request headers did not arrive in time.
    pub(crate) header_timeouts: AtomicU64,
    /// Failed accepts other than a client giving up (out of file descriptors, say).
    pub(crate) accept_errors: AtomicU64,
}

/// How long to wait after an accept error that is not about one connection (out of file
/// descriptors, say) before accepting again, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Serves `router` on `listener` until `stop` fires (or its sender is dropped), then lets the
/// HTTP requests in flight finish within `limits.drain_timeout`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    mut stop: oneshot::Receiver<()>,
) {
    // acquire_many counts in u32.
    let slots = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(slots));
    let (stopping, stop_signal) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut last_logged: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                if is_connection_error(&error) {
                    continue;
                }
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if last_logged.is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL)
                {
                    last_logged = Some(now);
                    tracing::warn!(%error, "cannot accept connections (raise the open-file limit?)");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Every write is already a whole batch: Nagle would only add delay.
        let _ = tcp.set_nodelay(true);
        let connection = builder
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()))
            .with_upgrades();
        let mut stop_signal = stop_signal.clone();
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let stopping = async move { stop_signal.wait_for(|stopping| *stopping).await.is_ok() };
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                true = stopping => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if ended.is_err_and(|error| error.is_timeout()) {
                stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    let _ = stopping.send(true);
    // Every connection task holds a permit until it ends: all permits back means all done.
    let all = u32::try_from(slots).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.drain_timeout, permits.acquire_many(all)).await;
}
