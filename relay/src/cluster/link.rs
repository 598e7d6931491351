//! The link to a cluster's store (Redis): it executes the core's [`StoreRequest`]s with exactly
//! the commands their docs name, forwards the cluster's channels, and reports when it fails.
//! It decides nothing: when to connect, what to ask, what an answer means and when to try
//! again after a failure are the core's (issue 14).
//!
//! # Life of a link
//!
//! [`connect`] spawns one task that opens a command connection and a subscription connection
//! (each within the timeout), subscribes to the update stream and the demand channel, loads
//! the scripts, and sends [`LinkEvent::Connected`]. From then on it executes requests strictly
//! in the order [`Link::send`] queued them, with one [`LinkEvent::Reply`] per request in that
//! order, and forwards channel messages as [`LinkEvent::Stream`] and
//! [`LinkEvent::DemandChange`]. The first failure of any kind (connecting, a command's error,
//! a command unanswered within the timeout, an unexpected reply, the subscription connection
//! closing) is sent once as [`LinkEvent::Down`] and ends the task, dropping the requests still
//! queued. It never reconnects: the core does, with backoff, by calling [`connect`] again.
//!
//! # Bounds and backpressure
//!
//! - Requests wait in a queue of [`REQUEST_QUEUE`]; [`Link::send`] never waits and hands a
//!   request back when the queue is full (or the link has ended).
//! - `Connected`, `Reply` and `Down` are sent on the caller's (bounded) events channel with
//!   `send().await`: they cannot be dropped (every request gets its reply), so a hub task that
//!   stops draining pauses the execution of requests and the reading of their replies, and
//!   the request queue above then fills and says so.
//! - Channel messages are sent with `try_send`. redis-rs moves them from its socket reader to
//!   the stream polled here through an *unbounded* channel, so the link keeps draining that
//!   stream whatever the events channel does, and drops a message that finds the events
//!   channel full (counted: [`LinkCounters::messages_dropped`]). Nothing is lost for good: a
//!   follower resynchronises from stored snapshots on a sequence gap, and demand entries are
//!   rewritten well within their TTL and reread with [`StoreRequest::ReadDemand`].
//! - Messages over [`MAX_MESSAGE_BYTES`] are dropped and counted
//!   ([`LinkCounters::messages_oversized`]): no relay publishes them. (redis-rs has read them
//!   whole by then; the server's pub/sub output-buffer limit is what bounds that.)
//!
//! # Secrets
//!
//! The password in a [`RedisUrl`] never appears in its `Debug` or `Display`, in a parse error
//! or in a [`LinkEvent::Down`] reason.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubStream};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Script,
    ScriptInvocation,
};
use tickwire_core::cluster::{Keys, LeaseReply, SnapshotWrite, StoreReply, StoreRequest};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;

/// Requests queued at most before [`Link::send`] refuses more.
pub(crate) const REQUEST_QUEUE: usize = 4_096;

/// Largest channel message forwarded, in bytes; bigger ones are dropped and counted.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Consecutive queued publishes sent as one pipeline at most: enough to amortise round trips
/// under a burst, small enough that one slow pipeline stays within the command timeout.
const MAX_PIPELINE: usize = 256;

/// `SCAN … COUNT`: keys the server looks at per call while pruning snapshots.
const SCAN_COUNT: usize = 1_000;

/// Keys per `MGET` / `SREM` while reading demand, so one command stays small.
const DEMAND_CHUNK: usize = 256;

/// Longest expiry sent, in ms (about 1,100 years): Redis refuses an expiry whose absolute time
/// overflows, and a duration that large can only be a mistake that should not break the link.
const MAX_EXPIRY_MS: u64 = 1 << 45;

/// `SET lease NX PX`, then on success the next epoch in the lease's value: one script, so no
/// other relay can see the lease without its epoch. The epoch is read back with `GET` so it
/// stays exact as a string (Lua numbers are doubles); it is raised above the caller's floor
/// (the highest epoch it has seen) so a store restarted empty never reuses an epoch.
const ACQUIRE_LEASE: &str = r"
-- KEYS[1] the lease, KEYS[2] the epoch counter; ARGV[1] the relay id, ARGV[2] the TTL (ms),
-- ARGV[3] the floor plus one.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local next = redis.call('INCR', KEYS[2])
  if next < tonumber(ARGV[3]) then
    redis.call('SET', KEYS[2], ARGV[3])
  end
  local epoch = redis.call('GET', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
  return {1, epoch}
end
return {0, redis.call('PTTL', KEYS[1])}
";

/// Extends the lease only while it still holds this relay's value and epoch.
const RENEW_LEASE: &str = r"
-- KEYS[1] the lease; ARGV[1] the value held, ARGV[2] the TTL (ms).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Deletes the lease only while it still holds this relay's value and epoch.
const RELEASE_LEASE: &str = r"
-- KEYS[1] the lease; ARGV[1] the value held.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// The fenced publish: nothing happens unless the stored epoch is the publisher's, so a
/// leader that lost the lease cannot overwrite a snapshot or publish after its successor.
const PUBLISH: &str = r"
-- KEYS[1] the epoch counter, KEYS[2] the symbol's snapshot (absent when ARGV[2] is 'keep');
-- ARGV[1] the publisher's epoch, ARGV[2] 'set', 'del' or 'keep', ARGV[3] the snapshot text,
-- ARGV[4] the update channel, ARGV[5] the message (absent: none).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'set' then
  redis.call('SET', KEYS[2], ARGV[3])
elseif ARGV[2] == 'del' then
  redis.call('DEL', KEYS[2])
end
if ARGV[5] then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1
";

/// Where the cluster's store is: a `redis://` or `rediss://` (TLS) URL,
/// `redis[s]://[user][:password@]host[:port][/db]`. Its `Debug` and `Display` show the
/// password as `***`.
#[derive(Clone)]
pub struct RedisUrl {
    client: Client,
    /// The URL with its password redacted.
    shown: String,
    /// The password, to scrub from error text that might echo it.
    password: Option<String>,
}

impl RedisUrl {
    /// Parses and checks `text` (nothing is connected yet).
    ///
    /// # Errors
    /// A message for a URL that is not `redis://` or `rediss://` or does not parse; it never
    /// contains the URL's password.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let scheme = text
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("redis" | "rediss")) {
            return Err("the cluster store URL must start with redis:// or rediss://".to_owned());
        }
        // redis-rs's messages name what is wrong without echoing the URL; the raw password is
        // scrubbed anyway, in case a future version quotes it.
        let scrub = |message: String| match raw_password(text) {
            Some(password) if !password.is_empty() => message.replace(password, "***"),
            _ => message,
        };
        let info = text
            .into_connection_info()
            .map_err(|error| scrub(format!("the cluster store URL: {error}")))?;
        let shown = redacted(&info)?;
        let password = info.redis_settings().password().map(str::to_owned);
        let client =
            Client::open(info).map_err(|error| scrub(format!("the cluster store URL: {error}")))?;
        Ok(RedisUrl {
            client,
            shown,
            password,
        })
    }

    /// `text` with every occurrence of the password replaced by `***`.
    fn redact(&self, text: &str) -> String {
        match self.password.as_deref() {
            Some(password) if !password.is_empty() => text.replace(password, "***"),
            _ => text.to_owned(),
        }
    }
}

impl RedisUrl {
    /// Whether the URL carries a password (which must then stay off command lines).
    pub fn has_password(&self) -> bool {
        self.password
            .as_deref()
            .is_some_and(|password| !password.is_empty())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("RedisUrl")
            .field(&self.shown)
            .finish()
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.shown)
    }
}

/// The password part of a URL as written (percent-encoding and all), if any: after the first
/// `:` of the user info, which ends at the authority's last `@`.
fn raw_password(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (user_info, _) = authority.rsplit_once('@')?;
    let (_, password) = user_info.split_once(':')?;
    Some(password)
}

/// `redis[s]://user:***@host:port/db`, from what redis-rs parsed.
fn redacted(info: &ConnectionInfo) -> Result<String, String> {
    let (scheme, host, port, insecure) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => ("redis", host, *port, false),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => ("rediss", host, *port, *insecure),
        _ => return Err("the cluster store URL must name a host and port".to_owned()),
    };
    let settings = info.redis_settings();
    let user_info = match (settings.username(), settings.password()) {
        (Some(user), Some(_)) => format!("{user}:***@"),
        (Some(user), None) => format!("{user}@"),
        (None, Some(_)) => ":***@".to_owned(),
        (None, None) => String::new(),
    };
    // An IPv6 address needs its brackets back to read as a URL.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let fragment = if insecure { "#insecure" } else { "" };
    Ok(format!(
        "{scheme}://{user_info}{host}:{port}/{}{fragment}",
        settings.db()
    ))
}

/// What the link reports, on the events channel given to [`connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// Both connections are up, subscribed and the scripts loaded: requests are executed.
    Connected,
    /// The link failed and has ended (reported once, last); the reason never holds the
    /// password. Requests still queued were dropped unanswered.
    Down(String),
    /// The answer to the oldest request not yet answered.
    Reply(StoreReply),
    /// A message of the update stream (`NAME:updates`).
    Stream(Bytes),
    /// A demand entry just written (`NAME:demand-changes`).
    DemandChange(Bytes),
}

/// Channel messages the link did not forward, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LinkCounters {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    pub(crate) messages_oversized: u64,
    /// Found the events channel full.
    pub(crate) messages_dropped: u64,
}

/// The counters the link's task updates and [`Link::counters`] reads.
#[derive(Debug, Default)]
struct SharedCounters {
    messages_oversized: AtomicU64,
    messages_dropped: AtomicU64,
}

/// A running link (see the [module docs](self)). Dropping it, or [`Link::close`], ends its
/// task and closes both connections.
#[derive(Debug)]
pub(crate) struct Link {
    requests: mpsc::Sender<StoreRequest>,
    task: JoinHandle<()>,
    counters: Arc<SharedCounters>,
}

impl Link {
    /// Queues `request` without waiting; its [`LinkEvent::Reply`] comes in queue order.
    ///
    /// # Errors
    /// The request back when the queue is full or the link has ended.
    pub(crate) fn send(&self, request: StoreRequest) -> Result<(), StoreRequest> {
        self.requests
            .try_send(request)
            .map_err(|error| match error {
                TrySendError::Full(request) | TrySendError::Closed(request) => request,
            })
    }

    /// Messages not forwarded so far.
    pub(crate) fn counters(&self) -> LinkCounters {
        LinkCounters {
            messages_oversized: self.counters.messages_oversized.load(Ordering::Relaxed),
            messages_dropped: self.counters.messages_dropped.load(Ordering::Relaxed),
        }
    }

    /// Ends the link now: queued requests are dropped and nothing more is reported (not even
    /// `Down`).
    pub(crate) fn close(self) {
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a link to `url` for the cluster `keys`, reporting on `events`; every connection
/// attempt and every command gets `timeout`. See the [module docs](self).
///
/// # Panics
/// Outside a tokio runtime (it spawns the link's task).
pub(crate) fn connect(
    url: &RedisUrl,
    keys: Keys,
    events: mpsc::Sender<LinkEvent>,
    timeout: Duration,
) -> Link {
    let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
    let counters = Arc::new(SharedCounters::default());
    let worker = Worker::new(url.clone(), &keys, events, timeout, Arc::clone(&counters));
    let task = tokio::spawn(worker.run(queue));
    Link {
        requests,
        task,
        counters,
    }
}

/// Why a link's task ends.
enum Ending {
    /// Reported as [`LinkEvent::Down`].
    Failed(String),
    /// The events channel's receiver is gone: nobody is left to tell.
    Unheard,
}

/// One publish's fields, taken out of its request to batch it.
struct Publish {
    epoch: u64,
    symbol: Option<Arc<str>>,
    snapshot: SnapshotWrite,
    message: Option<String>,
}

/// The scripts, hashed once per link.
struct Scripts {
    acquire_lease: Script,
    renew_lease: Script,
    release_lease: Script,
    publish: Script,
}

/// The link's task: the names it uses and where it reports.
struct Worker {
    url: RedisUrl,
    events: mpsc::Sender<LinkEvent>,
    timeout: Duration,
    counters: Arc<SharedCounters>,
    scripts: Scripts,
    leader: String,
    epoch: String,
    relays: String,
    updates: String,
    demand_changes: String,
    /// `NAME:demand:`, followed by a relay id.
    demand_prefix: String,
    /// `NAME:snapshot:`, followed by a symbol.
    snapshot_prefix: String,
    snapshot_pattern: String,
}

impl Worker {
    fn new(
        url: RedisUrl,
        keys: &Keys,
        events: mpsc::Sender<LinkEvent>,
        timeout: Duration,
        counters: Arc<SharedCounters>,
    ) -> Worker {
        Worker {
            url,
            events,
            timeout,
            counters,
            scripts: Scripts {
                acquire_lease: Script::new(ACQUIRE_LEASE),
                renew_lease: Script::new(RENEW_LEASE),
                release_lease: Script::new(RELEASE_LEASE),
                publish: Script::new(PUBLISH),
            },
            leader: keys.leader(),
            epoch: keys.epoch(),
            relays: keys.relays(),
            updates: keys.updates(),
            demand_changes: keys.demand_changes(),
            demand_prefix: keys.demand(""),
            snapshot_prefix: keys.snapshot(""),
            snapshot_pattern: keys.snapshot_pattern(),
        }
    }

    async fn run(self, queue: mpsc::Receiver<StoreRequest>) {
        let Err(ending) = self.session(queue).await;
        if let Ending::Failed(reason) = ending {
            let reason = self.url.redact(&format!("{}: {reason}", self.url));
            // The task ends either way; an absent receiver has nothing to learn.
            let _ = self.events.send(LinkEvent::Down(reason)).await;
        }
    }

    async fn session(&self, mut queue: mpsc::Receiver<StoreRequest>) -> Result<Infallible, Ending> {
        let client = &self.url.client;
        // Every call is timed by `within`, which names what went unanswered. redis-rs's own
        // timeouts (1 s to connect, 500 ms to answer, unless set) would race it with a vaguer
        // message or cut a longer timeout short, so they are off; a timed-out link is dropped
        // whole anyway.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let mut commands = self
            .within(
                "connecting",
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await?;
        let mut pubsub = self
            .within("connecting for subscriptions", client.get_async_pubsub())
            .await?;
        self.within(
            "SUBSCRIBE to the update stream",
            pubsub.subscribe(&self.updates),
        )
        .await?;
        self.within(
            "SUBSCRIBE to demand changes",
            pubsub.subscribe(&self.demand_changes),
        )
        .await?;
        // Loaded up front so pipelined publishes can use EVALSHA (see `publish`).
        let mut load = redis::pipe();
        load.load_script(&self.scripts.acquire_lease)
            .load_script(&self.scripts.renew_lease)
            .load_script(&self.scripts.release_lease)
            .load_script(&self.scripts.publish);
        self.within(
            "SCRIPT LOAD",
            load.query_async::<Vec<String>>(&mut commands),
        )
        .await?;
        self.report(LinkEvent::Connected).await?;
        let messages = pubsub.into_on_message();
        // Both run in this task: while `execute` waits for room on the events channel,
        // `forward` keeps draining redis-rs's unbounded message buffer.
        tokio::select! {
            result = self.execute(&mut commands, &mut queue) => result,
            result = self.forward(messages) => result,
        }
    }

    /// Runs `future` (a Redis call) within the timeout; `what` names it in a failure.
    async fn within<T>(
        &self,
        what: &str,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Ending> {
        match tokio::time::timeout(self.timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Ending::Failed(format!("{what}: {error}"))),
            Err(_) => Err(Ending::Failed(format!(
                "{what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Sends an event that must not be dropped, waiting for room.
    async fn report(&self, event: LinkEvent) -> Result<(), Ending> {
        self.events.send(event).await.map_err(|_| Ending::Unheard)
    }

    /// Executes queued requests in order, publishes in batches.
    async fn execute(
        &self,
        commands: &mut MultiplexedConnection,
        queue: &mut mpsc::Receiver<StoreRequest>,
    ) -> Result<Infallible, Ending> {
        // A request taken off the queue while batching publishes, to execute next.
        let mut taken = None;
        loop {
            let request = match taken.take() {
                Some(request) => request,
                // No sender left: the link was dropped (its task is being aborted anyway).
                None => queue.recv().await.ok_or(Ending::Unheard)?,
            };
            let StoreRequest::Publish {
                epoch,
                symbol,
                snapshot,
                message,
            } = request
            else {
                let reply = self.execute_one(commands, request).await?;
                self.report(LinkEvent::Reply(reply)).await?;
                continue;
            };
            let mut batch = vec![Publish {
                epoch,
                symbol,
                snapshot,
                message,
            }];
            while batch.len() < MAX_PIPELINE {
                match queue.try_recv() {
                    Ok(StoreRequest::Publish {
                        epoch,
                        symbol,
                        snapshot,
                        message,
                    }) => batch.push(Publish {
                        epoch,
                        symbol,
                        snapshot,
                        message,
                    }),
                    Ok(other) => {
                        taken = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            for accepted in self.publish(commands, &batch).await? {
                self.report(LinkEvent::Reply(StoreReply::Published { accepted }))
                    .await?;
            }
        }
    }

    async fn execute_one(
        &self,
        commands: &mut MultiplexedConnection,
        request: StoreRequest,
    ) -> Result<StoreReply, Ending> {
        match request {
            StoreRequest::AcquireLease { relay, ttl, floor } => {
                let mut invocation = self.scripts.acquire_lease.prepare_invoke();
                invocation
                    .key(&self.leader)
                    .key(&self.epoch)
                    .arg(&relay)
                    .arg(expiry_ms(ttl))
                    .arg(floor.saturating_add(1));
                let (won, value) = self
                    .within(
                        "AcquireLease",
                        invocation.invoke_async::<(i64, i64)>(commands),
                    )
                    .await?;
                let reply = match won {
                    1 => LeaseReply::Acquired {
                        epoch: u64::try_from(value).map_err(|_| {
                            unexpected("AcquireLease", format_args!("epoch {value}"))
                        })?,
                    },
                    // PTTL is -1 for a key without expiry (and -2 for none at all).
                    0 => LeaseReply::Held {
                        remaining: u64::try_from(value).ok().map(Duration::from_millis),
                    },
                    _ => return Err(unexpected("AcquireLease", format_args!("{won}"))),
                };
                Ok(StoreReply::Lease(reply))
            }
            StoreRequest::RenewLease { value, ttl } => {
                let mut invocation = self.scripts.renew_lease.prepare_invoke();
                invocation.key(&self.leader).arg(&value).arg(expiry_ms(ttl));
                let renewed = self
                    .within("RenewLease", invocation.invoke_async::<i64>(commands))
                    .await?;
                Ok(StoreReply::Lease(if renewed == 1 {
                    LeaseReply::Renewed
                } else {
                    LeaseReply::Lost
                }))
            }
            StoreRequest::ReleaseLease { value } => {
                let mut invocation = self.scripts.release_lease.prepare_invoke();
                invocation.key(&self.leader).arg(&value);
                let released = self
                    .within("ReleaseLease", invocation.invoke_async::<i64>(commands))
                    .await?;
                Ok(StoreReply::Lease(if released == 1 {
                    LeaseReply::Released
                } else {
                    LeaseReply::Lost
                }))
            }
            StoreRequest::WriteDemand { relay, entry, ttl } => {
                // One transaction: no reader sees the id listed without its entry or the
                // other way round.
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("SET")
                    .arg(format!("{}{relay}", self.demand_prefix))
                    .arg(&entry)
                    .arg("PX")
                    .arg(expiry_ms(ttl))
                    .ignore()
                    .cmd("SADD")
                    .arg(&self.relays)
                    .arg(&relay)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&self.demand_changes)
                    .arg(&entry)
                    .ignore();
                self.within("WriteDemand", pipe.exec_async(commands))
                    .await?;
                Ok(StoreReply::Done)
            }
            StoreRequest::RemoveDemand { relay, entry } => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("DEL")
                    .arg(format!("{}{relay}", self.demand_prefix))
                    .ignore()
                    .cmd("SREM")
                    .arg(&self.relays)
                    .arg(&relay)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&self.demand_changes)
                    .arg(&entry)
                    .ignore();
                self.within("RemoveDemand", pipe.exec_async(commands))
                    .await?;
                Ok(StoreReply::Done)
            }
            StoreRequest::ReadDemand => self.read_demand(commands).await,
            StoreRequest::Publish {
                epoch,
                symbol,
                snapshot,
                message,
            } => {
                // `execute` batches publishes; this keeps the match whole.
                let publish = Publish {
                    epoch,
                    symbol,
                    snapshot,
                    message,
                };
                let accepted = self.publish(commands, &[publish]).await?;
                Ok(StoreReply::Published {
                    accepted: accepted.first().copied().unwrap_or(false),
                })
            }
            StoreRequest::ReadSnapshot { symbol } => {
                let text = self
                    .within(
                        "ReadSnapshot",
                        redis::cmd("GET")
                            .arg(format!("{}{symbol}", self.snapshot_prefix))
                            .query_async::<Option<Vec<u8>>>(commands),
                    )
                    .await?;
                Ok(StoreReply::Snapshot { symbol, text })
            }
            StoreRequest::PruneSnapshots { keep } => {
                self.prune_snapshots(commands, &keep).await?;
                Ok(StoreReply::Done)
            }
        }
    }

    /// Publishes `batch` as one pipeline of `EVALSHA`s, answering whether each was accepted.
    ///
    /// `NOSCRIPT` (the script cache was flushed since the link loaded it) fails the link
    /// rather than being retried here: other clients may reload the script between the
    /// pipeline's commands, so some publishes may have run and a retry could repeat them. The
    /// next link loads the scripts again.
    async fn publish(
        &self,
        commands: &mut MultiplexedConnection,
        batch: &[Publish],
    ) -> Result<Vec<bool>, Ending> {
        let invocations: Vec<ScriptInvocation<'_>> = batch
            .iter()
            .map(|publish| self.publish_invocation(publish))
            .collect();
        let mut pipe = redis::pipe();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let replies = self
            .within("Publish", pipe.query_async::<Vec<i64>>(commands))
            .await?;
        if replies.len() != batch.len() {
            return Err(unexpected(
                "Publish",
                format_args!("{} replies to {} publishes", replies.len(), batch.len()),
            ));
        }
        Ok(replies.into_iter().map(|reply| reply == 1).collect())
    }

    fn publish_invocation(&self, publish: &Publish) -> ScriptInvocation<'_> {
        let mut invocation = self.scripts.publish.prepare_invoke();
        invocation.key(&self.epoch);
        // A snapshot write without a symbol names no key: there is nothing it could change.
        let (operation, text) = match (&publish.symbol, &publish.snapshot) {
            (Some(symbol), SnapshotWrite::Set(text)) => {
                invocation.key(format!("{}{symbol}", self.snapshot_prefix));
                ("set", text.as_str())
            }
            (Some(symbol), SnapshotWrite::Delete) => {
                invocation.key(format!("{}{symbol}", self.snapshot_prefix));
                ("del", "")
            }
            _ => ("keep", ""),
        };
        invocation
            .arg(publish.epoch)
            .arg(operation)
            .arg(text)
            .arg(&self.updates);
        if let Some(message) = &publish.message {
            invocation.arg(message);
        }
        invocation
    }

    /// `SMEMBERS`, `MGET` of each id's entry, and `SREM` of the ids whose entry has expired.
    ///
    /// Not atomic: a relay whose entry expired and that writes it again between the `MGET`
    /// and the `SREM` is unlisted until its next write adds it back (every write does), which
    /// is within one demand refresh.
    async fn read_demand(
        &self,
        commands: &mut MultiplexedConnection,
    ) -> Result<StoreReply, Ending> {
        let ids = self
            .within(
                "ReadDemand (SMEMBERS)",
                redis::cmd("SMEMBERS")
                    .arg(&self.relays)
                    .query_async::<Vec<Vec<u8>>>(commands),
            )
            .await?;
        let mut entries = Vec::new();
        let mut expired = Vec::new();
        for chunk in ids.chunks(DEMAND_CHUNK) {
            let keys: Vec<Vec<u8>> = chunk
                .iter()
                .map(|id| [self.demand_prefix.as_bytes(), id].concat())
                .collect();
            let values = self
                .within(
                    "ReadDemand (MGET)",
                    redis::cmd("MGET")
                        .arg(&keys)
                        .query_async::<Vec<Option<Vec<u8>>>>(commands),
                )
                .await?;
            if values.len() != chunk.len() {
                return Err(unexpected(
                    "ReadDemand",
                    format_args!("{} values for {} keys", values.len(), chunk.len()),
                ));
            }
            for (id, value) in chunk.iter().zip(values) {
                match value {
                    // Text that is not UTF-8 is no relay's entry; the core would refuse it.
                    Some(value) => entries.extend(String::from_utf8(value).ok()),
                    None => expired.push(id.as_slice()),
                }
            }
        }
        for chunk in expired.chunks(DEMAND_CHUNK) {
            self.within(
                "ReadDemand (SREM)",
                redis::cmd("SREM")
                    .arg(&self.relays)
                    .arg(chunk)
                    .exec_async(commands),
            )
            .await?;
        }
        Ok(StoreReply::Demand(entries))
    }

    /// `SCAN`s the snapshots and `DEL`s, page by page, those whose symbol is not in `keep`.
    async fn prune_snapshots(
        &self,
        commands: &mut MultiplexedConnection,
        keep: &[Arc<str>],
    ) -> Result<(), Ending> {
        let keep: HashSet<&[u8]> = keep.iter().map(|symbol| symbol.as_bytes()).collect();
        let prefix = self.snapshot_prefix.as_bytes();
        let mut cursor = 0_u64;
        loop {
            let (next, found) = self
                .within(
                    "PruneSnapshots (SCAN)",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&self.snapshot_pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async::<(u64, Vec<Vec<u8>>)>(commands),
                )
                .await?;
            let stale: Vec<&[u8]> = found
                .iter()
                .map(Vec::as_slice)
                .filter(|key| {
                    key.strip_prefix(prefix)
                        .is_some_and(|symbol| !keep.contains(symbol))
                })
                .collect();
            if !stale.is_empty() {
                self.within(
                    "PruneSnapshots (DEL)",
                    redis::cmd("DEL").arg(&stale).exec_async(commands),
                )
                .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Forwards channel messages until the subscription connection closes.
    async fn forward(&self, mut messages: PubSubStream) -> Result<Infallible, Ending> {
        while let Some(message) = messages.next().await {
            let channel = message.get_channel_name();
            let wrap: fn(Bytes) -> LinkEvent = if channel == self.updates {
                LinkEvent::Stream
            } else if channel == self.demand_changes {
                LinkEvent::DemandChange
            } else {
                continue;
            };
            let payload = message.get_payload_bytes();
            if payload.len() > MAX_MESSAGE_BYTES {
                self.counters
                    .messages_oversized
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.events.try_send(wrap(Bytes::copy_from_slice(payload))) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.counters
                        .messages_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Closed(_)) => return Err(Ending::Unheard),
            }
        }
        Err(Ending::Failed(
            "the subscription connection closed".to_owned(),
        ))
    }
}

/// A TTL in whole milliseconds, at least 1 (Redis refuses `PX 0`) and at most
/// [`MAX_EXPIRY_MS`].
fn expiry_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_EXPIRY_MS)
        .clamp(1, MAX_EXPIRY_MS)
}

fn unexpected(what: &str, detail: fmt::Arguments<'_>) -> Ending {
    Ending::Failed(format!("{what}: unexpected reply ({detail})"))
}
