//! An emulator on a tokio runtime of its own, so the code under test and the market it reads
//! never share worker threads, and a test can drive it from any runtime (or none).

use crate::{Emulator, EmulatorConfig};

/// An [`Emulator`] served by a one-worker runtime of its own; dropping it shuts both down.
///
/// ```no_run
/// use tickwire_emulator::{BackgroundEmulator, EmulatorConfig};
///
/// let market = BackgroundEmulator::start(EmulatorConfig::default());
/// println!("connect to {}", market.emulator().url());
/// ```
pub struct BackgroundEmulator {
    runtime: Option<tokio::runtime::Runtime>,
    emulator: Option<Emulator>,
}

impl std::fmt::Debug for BackgroundEmulator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BackgroundEmulator")
            .field("url", &self.emulator.as_ref().map(Emulator::url))
            .finish()
    }
}

impl BackgroundEmulator {
    /// Starts the emulator on its own runtime.
    ///
    /// # Panics
    /// The runtime cannot be built or the emulator cannot bind a loopback port (this is a test
    /// fixture: it fails the test that needs it).
    pub fn start(config: EmulatorConfig) -> BackgroundEmulator {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the emulator");
        // Started from a plain thread: callers may be inside an async context.
        let handle = runtime.handle().clone();
        let emulator = std::thread::spawn(move || handle.block_on(Emulator::start(config)))
            .join()
            .expect("the emulator's start-up thread")
            .expect("the emulator binds a loopback port");
        BackgroundEmulator {
            runtime: Some(runtime),
            emulator: Some(emulator),
        }
    }

    /// The emulator (its URL, its fault and market controls).
    ///
    /// # Panics
    /// Never: it is only taken on drop.
    pub fn emulator(&self) -> &Emulator {
        self.emulator.as_ref().expect("held until drop")
    }
}

impl Drop for BackgroundEmulator {
    fn drop(&mut self) {
        // Dropped inside an async context, blocking on a runtime is not allowed: shut the
        // emulator down from a plain thread, then release the runtime.
        if let (Some(emulator), Some(runtime)) = (self.emulator.take(), self.runtime.take()) {
            let handle = runtime.handle().clone();
            let _ = std::thread::spawn(move || handle.block_on(emulator.shutdown())).join();
            runtime.shutdown_background();
        }
    }
}
