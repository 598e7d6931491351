//! The DuckDB side of `tickwire relay`: `--store` (record everything relayed, and start from
//! the last recorded states) and `--source duckdb:FILE` (serve the rows of a query).
//!
//! The relay's hub task hands every upstream event to the core's [`Recorder`] through the
//! relay's tap (a lock and a few pushes, never a wait on the disk); a task here takes the
//! batches the recorder decides on to the writer thread, as `tickwire record` does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tickwire_core::record::{Recorder, RecorderConfig};
use tickwire_relay::{EventTap, Preloaded, QueryRunner};
use tickwire_store::query::SqlQuery;
use tickwire_store::{Store, Written};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::Failure;
use crate::record::{Writer, sleep_until, unix_micros};

/// What the recorder and the relay's tap share.
struct Shared {
    recorder: Mutex<Recorder>,
    /// Woken when a batch is due before the recorder's own timer (its row limit reached).
    due: Notify,
}

impl Shared {
    fn recorder(&self) -> MutexGuard<'_, Recorder> {
        // The recorder's state stays consistent whatever panicked while it was held.
        self.recorder.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A relay's recording into its store, running until [`Recording::finish`].
pub(crate) struct Recording {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Written, Failure>>,
    path: PathBuf,
}

/// Opens (or creates) the store, reads the last state of up to `limit` symbols (with the
/// newest bar of `timeframe`'s series), and starts recording.
pub(crate) async fn open(
    path: &Path,
    timeframe: Option<&str>,
    limit: usize,
    config: RecorderConfig,
) -> Result<(Recording, EventTap, Vec<Preloaded>), Failure> {
    let states = {
        let path = path.to_owned();
        let timeframe = timeframe.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&path)?;
            store.last_states(timeframe.as_deref(), limit)
        })
        .await
        .map_err(|_| Failure::Message("reading the store failed".to_owned()))?
        .map_err(|error| Failure::Message(error.to_string()))?
    };
    let preload = states
        .into_iter()
        .map(|state| Preloaded {
            quote: state.quote.to_quote(),
            bar: state
                .bar
                .zip(timeframe)
                .map(|(bar, timeframe)| (Arc::from(timeframe), bar.to_bar(0), bar.closed)),
        })
        .collect();
    let writer = Writer::open(path.to_owned()).await?;
    let shared = Arc::new(Shared {
        recorder: Mutex::new(Recorder::new(config)),
        due: Notify::new(),
    });
    let tap = {
        let shared = shared.clone();
        EventTap::new(move |event| {
            let now = Instant::now();
            let mut recorder = shared.recorder();
            recorder.handle_event(now, unix_micros(), event);
            if recorder.poll_timeout().is_some_and(|due| due <= now) {
                shared.due.notify_one();
            }
        })
    };
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(write(shared.clone(), writer, stopped));
    Ok((
        Recording {
            shared,
            stop: Some(stop),
            task,
            path: path.to_owned(),
        },
        tap,
        preload,
    ))
}

impl Recording {
    /// Completes if the store fails (a full disk, an I/O error): with why. After it has
    /// completed, [`Recording::finish`] must not be called.
    pub(crate) async fn failed(&mut self) -> Failure {
        match (&mut self.task).await {
            Ok(Err(failure)) => failure,
            Ok(Ok(_)) => Failure::Message("the store's writer stopped unexpectedly".to_owned()),
            Err(_) => Failure::Message("the store's writer failed".to_owned()),
        }
    }

    /// Writes everything received (call after the relay shut down, so nothing more comes) and
    /// says what was written.
    pub(crate) async fn finish(mut self) -> Result<String, Failure> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let written = self
            .task
            .await
            .map_err(|_| Failure::Message("the store's writer failed".to_owned()))??;
        let conflated = self.shared.recorder().counters().quotes_conflated;
        Ok(format!(
            "tickwire relay: {} quotes, {} bar updates, {} gaps recorded to {} ({conflated} \
             quotes conflated)",
            written.quotes,
            written.bars,
            written.gaps,
            self.path.display()
        ))
    }
}

/// Takes each batch the recorder decides on to the writer, until stopped and idle.
async fn write(
    shared: Arc<Shared>,
    mut writer: Writer,
    mut stopped: oneshot::Receiver<()>,
) -> Result<Written, Failure> {
    let mut totals = Written::default();
    let mut stopping = false;
    loop {
        let (batch, due, idle) = {
            let mut recorder = shared.recorder();
            if stopping {
                recorder.finish();
            }
            let batch = recorder.poll_batch(Instant::now());
            (batch, recorder.poll_timeout(), recorder.is_idle())
        };
        if let Some(batch) = batch {
            writer.send(batch)?;
        } else if stopping && idle {
            break;
        }
        tokio::select! {
            _ = &mut stopped, if !stopping => stopping = true,
            written = writer.done.recv() => {
                let Some((id, result)) = written else {
                    return Err(Failure::Message("the store's writer stopped unexpectedly".to_owned()));
                };
                let written = result.map_err(|error| Failure::Message(error.to_string()))?;
                totals = totals.plus(written);
                let mut recorder = shared.recorder();
                recorder.count_rows(written.rows());
                recorder.handle_written(Instant::now(), id).map_err(|unknown| {
                    Failure::Message(format!("the store's writer answered batch {} that was never sent", unknown.0))
                })?;
            }
            () = sleep_until(due) => {}
            () = shared.due.notified() => {}
        }
    }
    writer.close().await?;
    Ok(totals)
}

/// `--source duckdb:FILE --query SQL` as the relay's query runner.
#[derive(Debug)]
pub(crate) struct DuckDbSource(SqlQuery);

impl DuckDbSource {
    pub(crate) fn new(path: &Path, sql: &str) -> Result<DuckDbSource, Failure> {
        SqlQuery::new(path, sql)
            .map(DuckDbSource)
            .map_err(|error| Failure::Message(format!("--query: {error}")))
    }
}

impl DuckDbSource {
    /// The symbols of the query's first `count` rows now (none if it fails: the relay's own
    /// runs report why).
    pub(crate) async fn first_symbols(&self, count: usize) -> Vec<String> {
        let query = self.0.clone();
        tokio::task::spawn_blocking(move || query.run(count))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|rows| {
                rows.into_iter()
                    .map(|row| row.symbol.to_string())
                    .filter(|symbol| !symbol.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl QueryRunner for DuckDbSource {
    fn run(&self, limit: usize) -> Result<Vec<tickwire_core::query::QueryRow>, String> {
        self.0.run(limit)
    }

    fn describe(&self) -> String {
        format!("duckdb:{}", self.0.path().display())
    }
}
