//! `tickwire record`: quotes, bars and bar gaps into a DuckDB file until Ctrl-C or SIGTERM.
//!
//! The feed is the resilient client, as for `stream`; the core's [`Recorder`] decides what
//! goes into which batch and when; one writer thread owns the database and writes one batch
//! per transaction. This loop only moves events, batches and time between them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use futures::{FutureExt, StreamExt};
use tickwire_core::client::parse_duration;
use tickwire_core::record::{Batch, Recorder, RecorderConfig};
use tickwire_core::timeframe::Timeframe;
use tickwire_driver::{Event, Feed, State};
use tickwire_store::{Store, StoreError, Written};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::Failure;
use crate::access::{Access, FallbackArgs};
use crate::feed_args::FeedArgs;
use crate::stream::{parse_bar_spec, subscribe, unreachable};

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// Record live quotes (and bars) into a DuckDB file until Ctrl-C or SIGTERM.
#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// Symbols such as BINANCE:BTCUSDT or NASDAQ:AAPL.
    #[arg(required = true)]
    symbols: Vec<String>,
    /// Also record bars: TIMEFRAME[:COUNT] (COUNT bars of history first, default 100); may be
    /// given more than once, e.g. --bars 1:300 --bars 1D:30.
    #[arg(long = "bars", value_parser = parse_bar_spec)]
    bars: Vec<(Timeframe, u32)>,
    /// The DuckDB file; created with its tables (quotes, bars, gaps) if missing.
    #[arg(long, env = "TICKWIRE_DB")]
    db: PathBuf,
    /// Commit at least this often: after `kill -9` at most this much is missing.
    #[arg(long, env = "TICKWIRE_COMMIT_EVERY", default_value = "1s", value_parser = duration)]
    commit_every: Duration,
    /// Commit at once when this many rows are waiting.
    #[arg(long, env = "TICKWIRE_COMMIT_ROWS", default_value_t = 10_000)]
    commit_rows: usize,
    /// While the database is behind, past this many quotes waiting a symbol's new quote
    /// replaces its latest waiting one (counted as conflated); bars are never dropped.
    #[arg(long, env = "TICKWIRE_MAX_PENDING_QUOTES", default_value_t = 100_000)]
    max_pending_quotes: usize,
    /// How often progress is printed on stderr when it is a terminal (0: never). A summary
    /// line is printed at exit either way.
    #[arg(long, env = "TICKWIRE_PROGRESS_EVERY", default_value = "5s", value_parser = duration)]
    progress_every: Duration,
    #[command(flatten)]
    fallback: FallbackArgs,
    #[command(flatten)]
    feed: FeedArgs,
}

impl RecordArgs {
    fn recorder_config(&self) -> Result<RecorderConfig, Failure> {
        recorder_config(self.commit_every, self.commit_rows, self.max_pending_quotes)
    }
}

/// The recorder's batching, from the flags of `record` (and `relay --store`), checked.
pub(crate) fn recorder_config(
    commit_every: Duration,
    commit_rows: usize,
    max_pending_quotes: usize,
) -> Result<RecorderConfig, Failure> {
    if commit_every.is_zero() || commit_every > Duration::from_secs(3600) {
        return Err(Failure::Message(format!(
            "--commit-every {commit_every:?}: expected more than 0 and at most 1h"
        )));
    }
    if commit_rows == 0 || max_pending_quotes == 0 {
        return Err(Failure::Message(
            "--commit-rows and --max-pending-quotes must be at least 1".to_owned(),
        ));
    }
    Ok(RecorderConfig {
        commit_every,
        batch_rows: commit_rows,
        max_pending_quotes,
    })
}

pub(crate) async fn run(args: RecordArgs) -> Result<(), Failure> {
    let recorder = Recorder::new(args.recorder_config()?);
    // The file first: a path that cannot be written fails before anything connects.
    let mut writer = Writer::open(args.db.clone()).await?;
    let (config, access) = args.feed.prepare(Some(&args.fallback)).await?;
    let give_up_unreachable = config.polling.is_none();
    let stop = crate::signals::stop();
    let options = access.options(&config);
    let feed = args.feed.connect(config, options);
    let wanted = subscribe(&feed, &args.symbols, &args.bars);
    let mut session = Session {
        recorder,
        totals: Written::default(),
        started: Instant::now(),
        last_progress: (Instant::now(), 0),
        progress_every: (std::io::stderr().is_terminal() && !args.progress_every.is_zero())
            .then_some(args.progress_every),
    };
    let ended = session
        .record(
            &feed,
            &mut writer,
            wanted,
            &access,
            give_up_unreachable,
            stop,
        )
        .await;
    feed.close().await;
    // What the feed delivered before it closed is written too.
    let mut events = feed.events();
    while let Some(Some(event)) = events.next().now_or_never() {
        session.take(&event);
    }
    let finished = match &ended {
        Ended::StoreFailed(_) => Ok(()),
        _ => session.finish(&mut writer).await,
    };
    let closed = writer.close().await;
    eprintln!("{}", session.summary(&args.db));
    match (ended, finished, closed) {
        (Ended::StoreFailed(failure) | Ended::Failed(failure), _, _) => Err(failure),
        (Ended::Stopped, Err(failure), _) | (Ended::Stopped, Ok(()), Err(failure)) => Err(failure),
        (Ended::Stopped, Ok(()), Ok(())) => Ok(()),
    }
}

/// Why recording stopped.
enum Ended {
    /// Ctrl-C, SIGTERM, or the feed ended: commit what was received, exit 0.
    Stopped,
    /// The feed cannot work (unreachable, token rejected, no valid symbol): commit, then fail.
    Failed(Failure),
    /// The database failed: what it committed stays; nothing more can be written.
    StoreFailed(Failure),
}

struct Session {
    recorder: Recorder,
    totals: Written,
    started: Instant,
    /// When progress was last printed, and the rows written by then.
    last_progress: (Instant, usize),
    progress_every: Option<Duration>,
}

impl Session {
    async fn record(
        &mut self,
        feed: &Feed,
        writer: &mut Writer,
        wanted: usize,
        access: &Access,
        give_up_unreachable: bool,
        stop: impl std::future::Future<Output = ()>,
    ) -> Ended {
        let mut events = feed.events();
        let mut ever_live = false;
        let mut rejected = Vec::new();
        tokio::pin!(stop);
        loop {
            if let Err(failure) = self.send_due(writer) {
                return Ended::StoreFailed(failure);
            }
            let due = self.recorder.poll_timeout();
            let progress_due = self
                .progress_every
                .map(|every| self.last_progress.0 + every);
            tokio::select! {
                () = &mut stop => return Ended::Stopped,
                event = events.next() => {
                    let Some(event) = event else {
                        return Ended::Stopped;
                    };
                    self.take(&event);
                    match &event {
                        Event::State(change) if change.state == State::Live => ever_live = true,
                        Event::State(_) if give_up_unreachable => {
                            if let Some(failure) = unreachable(feed, ever_live) {
                                return Ended::Failed(failure);
                            }
                        }
                        Event::QuoteError { symbol, reason }
                        | Event::SeriesError { symbol, reason, .. } => {
                            eprintln!("tickwire: not recording {symbol}: {reason}");
                            rejected.push(format!("{symbol} ({reason})"));
                            if rejected.len() >= wanted {
                                return Ended::Failed(Failure::Message(format!(
                                    "no valid symbol: {}",
                                    rejected.join(", ")
                                )));
                            }
                        }
                        Event::AuthTokenRejected { refreshed: false } => {
                            if let Some(failure) = access.rejected(feed) {
                                return Ended::Failed(failure);
                            }
                        }
                        _ => {}
                    }
                }
                written = writer.done.recv() => {
                    if let Err(failure) = self.written(written) {
                        return Ended::StoreFailed(failure);
                    }
                }
                () = sleep_until(due) => {}
                () = sleep_until(progress_due) => self.progress(),
            }
        }
    }

    fn take(&mut self, event: &Event) {
        self.recorder
            .handle_event(Instant::now(), unix_micros(), event);
    }

    /// Hands the writer the batch that is due, if any (the recorder keeps one in flight).
    fn send_due(&mut self, writer: &mut Writer) -> Result<(), Failure> {
        match self.recorder.poll_batch(Instant::now()) {
            Some(batch) => writer.send(batch),
            None => Ok(()),
        }
    }

    fn written(&mut self, written: Option<WriteResult>) -> Result<(), Failure> {
        let Some((id, result)) = written else {
            return Err(Failure::Message(
                "the database writer stopped unexpectedly".to_owned(),
            ));
        };
        let written = result.map_err(|error| Failure::Message(error.to_string()))?;
        self.totals = self.totals.plus(written);
        self.recorder.count_rows(written.rows());
        self.recorder
            .handle_written(Instant::now(), id)
            .map_err(|unknown| {
                Failure::Message(format!(
                    "the database writer answered batch {} that was never sent",
                    unknown.0
                ))
            })
    }

    /// Everything received goes out, batch by batch, until the recorder is idle.
    async fn finish(&mut self, writer: &mut Writer) -> Result<(), Failure> {
        self.recorder.finish();
        loop {
            self.send_due(writer)?;
            if self.recorder.is_idle() {
                return Ok(());
            }
            let written = writer.done.recv().await;
            self.written(written)?;
        }
    }

    fn progress(&mut self) {
        let now = Instant::now();
        let rows = self.rows();
        let (since, rows_then) = self.last_progress;
        let seconds = now.saturating_duration_since(since).as_secs_f64();
        let rate = if seconds > 0.0 {
            rows.saturating_sub(rows_then) as f64 / seconds
        } else {
            0.0
        };
        eprintln!(
            "tickwire record: {rows} rows written ({rate:.0} rows/s), lag {:.1} s, {} quotes conflated",
            self.recorder.lag(now).as_secs_f64(),
            self.recorder.counters().quotes_conflated
        );
        self.last_progress = (now, rows);
    }

    fn rows(&self) -> usize {
        self.totals
            .quotes
            .saturating_add(self.totals.bars)
            .saturating_add(self.totals.gaps)
    }

    fn summary(&self, db: &Path) -> String {
        let Written {
            quotes,
            bars,
            gaps,
            skipped,
        } = self.totals;
        let counters = self.recorder.counters();
        format!(
            "tickwire record: {quotes} quotes, {bars} bar updates, {gaps} gaps written to {} in \
             {:.1} s ({} quotes conflated, {skipped} rows with impossible times skipped)",
            db.display(),
            self.started.elapsed().as_secs_f64(),
            counters.quotes_conflated
        )
    }
}

pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_micros()).ok())
        .unwrap_or(0)
}

pub(crate) type WriteResult = (u64, Result<Written, StoreError>);

/// The thread that owns the database: DuckDB's calls block, so they stay off the runtime.
pub(crate) struct Writer {
    /// At most one batch waits here (the recorder keeps one in flight anyway).
    batches: Option<SyncSender<Batch>>,
    pub(crate) done: UnboundedReceiver<WriteResult>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) async fn open(path: PathBuf) -> Result<Writer, Failure> {
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let (batches, batches_rx) = std::sync::mpsc::sync_channel::<Batch>(1);
        let (done_tx, done) = unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("tickwire-store".to_owned())
            .spawn(move || {
                let mut store = match Store::open(&path) {
                    Ok(store) => {
                        let _ = opened_tx.send(Ok(()));
                        store
                    }
                    Err(error) => {
                        let _ = opened_tx.send(Err(error));
                        return;
                    }
                };
                while let Ok(batch) = batches_rx.recv() {
                    let result = store.write(&batch);
                    let failed = result.is_err();
                    if done_tx.send((batch.id, result)).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|error| Failure::Message(format!("cannot start the writer: {error}")))?;
        match opened_rx.await {
            Ok(Ok(())) => Ok(Writer {
                batches: Some(batches),
                done,
                thread: Some(thread),
            }),
            Ok(Err(error)) => Err(Failure::Message(error.to_string())),
            Err(_) => Err(Failure::Message(
                "the database writer stopped while opening the file".to_owned(),
            )),
        }
    }

    pub(crate) fn send(&mut self, batch: Batch) -> Result<(), Failure> {
        let sent = self
            .batches
            .as_ref()
            .is_some_and(|batches| batches.try_send(batch).is_ok());
        if sent {
            Ok(())
        } else {
            Err(Failure::Message(
                "the database writer stopped unexpectedly".to_owned(),
            ))
        }
    }

    /// Ends the thread once its last batch is written; the database is closed with it.
    pub(crate) async fn close(mut self) -> Result<(), Failure> {
        self.batches = None;
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Failure::Message(
                "the database writer failed while closing".to_owned(),
            )),
        }
    }
}
