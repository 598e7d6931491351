//! What several test binaries share.
#![allow(dead_code, unused_macros, unused_imports)]

use std::time::{Duration, Instant};

/// Short timings so faults are detected and recovered from in about a second.
pub(crate) fn quick_config(server: &Server) -> tickwire_driver::Config {
    tickwire_driver::Config {
        url: server.emulator().url(),
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(1_500),
        data_silence: Duration::from_secs(5),
        health_interval: Duration::from_millis(500),
        grace: Duration::from_millis(100),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        jitter: 0.0,
        breaker_recovery: Duration::from_secs(1),
        stable_after: Duration::from_millis(500),
        rate_limit_per_minute: 6_000,
        burst: 100,
        history_timeout: Duration::from_secs(5),
        ..tickwire_driver::Config::default()
    }
}

/// An emulator on a runtime of its own.
pub(crate) use tickwire_emulator::BackgroundEmulator as Server;

/// Each scenario as a test on tokio and one on async-std; `on_tokio` and `on_async_std` (the
/// ones above, or the file's own) must be in scope where it is used.
macro_rules! on_both_runtimes {
    ($($name:ident => $scenario:expr;)*) => {
        mod tokio_runtime {
            use super::*;
            $(#[test] fn $name() { on_tokio($scenario); })*
        }
        mod async_std_runtime {
            use super::*;
            $(#[test] fn $name() { on_async_std($scenario); })*
        }
    };
}

pub(crate) use on_both_runtimes;

/// Runs a scenario on a two-worker tokio runtime with tokio's driver.
pub(crate) fn on_tokio<F: std::future::Future<Output = ()>>(
    scenario: impl FnOnce(
        fn(tickwire_driver::Config, tickwire_driver::Options) -> tickwire_driver::Feed,
    ) -> F,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(scenario(tickwire_tokio::connect_with));
}

/// Runs a scenario on async-std with its driver.
pub(crate) fn on_async_std<F: std::future::Future<Output = ()>>(
    scenario: impl FnOnce(
        fn(tickwire_driver::Config, tickwire_driver::Options) -> tickwire_driver::Feed,
    ) -> F,
) {
    async_std::task::block_on(scenario(tickwire_async_std::connect_with));
}

/// A runtime-agnostic sleep (async-io's timer), so one scenario runs on every runtime.
pub(crate) async fn sleep(duration: Duration) {
    async_io::Timer::after(duration).await;
}

/// Polls `condition` every 10 ms until it holds, failing after `limit`.
pub(crate) async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}
