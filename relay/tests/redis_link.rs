//! The relay's Redis link (`relay/src/cluster/link.rs`) against a real `redis-server`: every
//! store request with the commands its docs name, the cluster's channels, failures reported
//! as `Down`, and the password kept out of everything printed.
//!
//! The link is crate-private, so this binary compiles its source as a module of its own.
//! Without `redis-server` the tests say so and pass, unless CI requires them (see
//! `support/redis.rs`). Every wait has a deadline.
#![cfg(unix)]

// The link is the crate's own (`pub(crate)`); compiled here as a module of the test, its
// `pub` items (re-exported by the crate) reach nothing and some go unused.
#[allow(unreachable_pub, dead_code)]
#[path = "../src/cluster/link.rs"]
mod link;
mod support;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use link::{LinkEvent, MAX_MESSAGE_BYTES, REQUEST_QUEUE, RedisUrl};
use redis::aio::MultiplexedConnection;
use tickwire_core::cluster::{Keys, LeaseReply, SnapshotWrite, StoreReply, StoreRequest};
use tokio::sync::mpsc;

use support::redis::RedisServer;

/// How long any one expectation may take to come true.
const DEADLINE: Duration = Duration::from_secs(10);

/// The link's timeout for connecting and for each command in most tests.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One relay's link and what it reported, with channel messages set aside while waiting for
/// replies.
struct Node {
    link: link::Link,
    events: mpsc::Receiver<LinkEvent>,
    messages: VecDeque<LinkEvent>,
}

impl Node {
    /// A link to `url` for cluster `cluster`, connected.
    async fn connect(url: &str, cluster: &str) -> Node {
        let mut node = Node::start(url, cluster, 4_096, TIMEOUT);
        assert_eq!(node.event().await, LinkEvent::Connected);
        node
    }

    /// A link that may not connect, with an events channel of `capacity`.
    fn start(url: &str, cluster: &str, capacity: usize, timeout: Duration) -> Node {
        let url = RedisUrl::parse(url).expect("a valid URL");
        let (sender, events) = mpsc::channel(capacity);
        let link = link::connect(&url, keys(cluster), sender, timeout);
        Node {
            link,
            events,
            messages: VecDeque::new(),
        }
    }

    async fn event(&mut self) -> LinkEvent {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event within {DEADLINE:?}"))
            .expect("the link's task ended without a Down")
    }

    /// Sends `request` and waits for its reply.
    async fn ask(&mut self, request: StoreRequest) -> StoreReply {
        self.link.send(request).expect("the queue has room");
        self.reply().await
    }

    async fn reply(&mut self) -> StoreReply {
        loop {
            match self.event().await {
                LinkEvent::Reply(reply) => return reply,
                message @ (LinkEvent::Stream(_) | LinkEvent::DemandChange(_)) => {
                    self.messages.push_back(message);
                }
                other => panic!("waiting for a reply: {other:?}"),
            }
        }
    }

    /// The next channel message.
    async fn message(&mut self) -> LinkEvent {
        if let Some(message) = self.messages.pop_front() {
            return message;
        }
        match self.event().await {
            message @ (LinkEvent::Stream(_) | LinkEvent::DemandChange(_)) => message,
            other => panic!("waiting for a channel message: {other:?}"),
        }
    }

    /// The `Down` reason, skipping anything before it; then checks that the task ended.
    async fn down(&mut self) -> String {
        let reason = loop {
            match self.event().await {
                LinkEvent::Down(reason) => break reason,
                LinkEvent::Connected => panic!("connected instead of failing"),
                _ => {}
            }
        };
        let after = tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("the link's task ended after Down");
        assert_eq!(after, None, "nothing after Down");
        reason
    }

    async fn acquire(&mut self, relay: &str, ttl: Duration) -> LeaseReply {
        self.acquire_above(relay, ttl, 0).await
    }

    async fn acquire_above(&mut self, relay: &str, ttl: Duration, floor: u64) -> LeaseReply {
        let reply = self
            .ask(StoreRequest::AcquireLease {
                relay: relay.to_owned(),
                ttl,
                floor,
            })
            .await;
        let StoreReply::Lease(reply) = reply else {
            panic!("AcquireLease answered {reply:?}");
        };
        reply
    }

    async fn publish(
        &mut self,
        epoch: u64,
        symbol: &str,
        snapshot: SnapshotWrite,
        message: Option<&str>,
    ) -> bool {
        match self.ask(publish(epoch, symbol, snapshot, message)).await {
            StoreReply::Published { accepted } => accepted,
            other => panic!("Publish answered {other:?}"),
        }
    }

    async fn demand(&mut self) -> BTreeSet<String> {
        match self.ask(StoreRequest::ReadDemand).await {
            StoreReply::Demand(entries) => entries.into_iter().collect(),
            other => panic!("ReadDemand answered {other:?}"),
        }
    }
}

fn keys(cluster: &str) -> Keys {
    Keys::new(cluster).expect("a valid cluster name")
}

fn publish(
    epoch: u64,
    symbol: &str,
    snapshot: SnapshotWrite,
    message: Option<&str>,
) -> StoreRequest {
    StoreRequest::Publish {
        epoch,
        symbol: Some(Arc::from(symbol)),
        snapshot,
        message: message.map(str::to_owned),
    }
}

/// A plain connection for looking at and changing the store behind the link's back.
async fn admin(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test server")
}

async fn get(admin: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(admin)
        .await
        .expect("GET")
}

async fn pttl(admin: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(admin)
        .await
        .expect("PTTL")
}

async fn members(admin: &mut MultiplexedConnection, key: &str) -> BTreeSet<String> {
    redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(admin)
        .await
        .expect("SMEMBERS")
}

fn stream(text: &str) -> LinkEvent {
    LinkEvent::Stream(Bytes::copy_from_slice(text.as_bytes()))
}

fn demand_change(text: &str) -> LinkEvent {
    LinkEvent::DemandChange(Bytes::copy_from_slice(text.as_bytes()))
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_lease_is_exclusive_renewed_only_by_its_holder_and_epochs_grow() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = admin(&server).await;
    let cluster = keys("c");
    let mut a = Node::connect(&server.url(), "c").await;
    let mut b = Node::connect(&server.url(), "c").await;
    let ttl = Duration::from_secs(5);

    assert_eq!(a.acquire("a", ttl).await, LeaseReply::Acquired { epoch: 1 });
    assert_eq!(
        get(&mut admin, &cluster.leader()).await.as_deref(),
        Some("a 1")
    );
    let left = pttl(&mut admin, &cluster.leader()).await;
    assert!(0 < left && left <= 5_000, "PTTL {left}");

    // Someone else holds it: the answer says for how long.
    let LeaseReply::Held {
        remaining: Some(remaining),
    } = b.acquire("b", ttl).await
    else {
        panic!("b took a held lease");
    };
    assert!(
        remaining > Duration::ZERO && remaining <= ttl,
        "{remaining:?}"
    );
    assert_eq!(
        get(&mut admin, &cluster.epoch()).await.as_deref(),
        Some("1")
    );

    // Only the holder's value renews and releases.
    let renew = |value: &str, ttl| StoreRequest::RenewLease {
        value: value.to_owned(),
        ttl,
    };
    let release = |value: &str| StoreRequest::ReleaseLease {
        value: value.to_owned(),
    };
    assert_eq!(
        a.ask(renew("a 1", Duration::from_secs(60))).await,
        StoreReply::Lease(LeaseReply::Renewed)
    );
    assert!(pttl(&mut admin, &cluster.leader()).await > 5_000);
    assert_eq!(
        b.ask(renew("b 1", ttl)).await,
        StoreReply::Lease(LeaseReply::Lost)
    );
    assert_eq!(
        b.ask(release("b 1")).await,
        StoreReply::Lease(LeaseReply::Lost)
    );
    assert_eq!(
        get(&mut admin, &cluster.leader()).await.as_deref(),
        Some("a 1")
    );
    assert_eq!(
        a.ask(release("a 1")).await,
        StoreReply::Lease(LeaseReply::Released)
    );
    assert_eq!(get(&mut admin, &cluster.leader()).await, None);

    // A takeover after a release, then one after an expiry: the epoch grows each time, and
    // the earlier holder's value no longer renews.
    assert_eq!(b.acquire("b", ttl).await, LeaseReply::Acquired { epoch: 2 });
    assert_eq!(
        a.ask(renew("a 1", ttl)).await,
        StoreReply::Lease(LeaseReply::Lost)
    );
    assert_eq!(
        b.ask(release("b 2")).await,
        StoreReply::Lease(LeaseReply::Released)
    );
    assert_eq!(
        a.acquire("a", Duration::from_millis(200)).await,
        LeaseReply::Acquired { epoch: 3 }
    );
    let deadline = Instant::now() + DEADLINE;
    let taken = loop {
        match b.acquire("b", ttl).await {
            LeaseReply::Acquired { epoch } => break epoch,
            LeaseReply::Held { .. } => {
                assert!(Instant::now() < deadline, "a's 200 ms lease never expired");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(taken, 4);
    assert_eq!(
        get(&mut admin, &cluster.leader()).await.as_deref(),
        Some("b 4")
    );
    assert_eq!(
        a.ask(renew("a 3", ttl)).await,
        StoreReply::Lease(LeaseReply::Lost)
    );

    // A relay that has seen a higher epoch (the store restarted empty since) gets one above
    // it; a lower floor changes nothing.
    assert_eq!(
        b.ask(release("b 4")).await,
        StoreReply::Lease(LeaseReply::Released)
    );
    assert_eq!(
        a.acquire_above("a", ttl, 10).await,
        LeaseReply::Acquired { epoch: 11 }
    );
    assert_eq!(
        a.ask(release("a 11")).await,
        StoreReply::Lease(LeaseReply::Released)
    );
    assert_eq!(
        b.acquire_above("b", ttl, 3).await,
        LeaseReply::Acquired { epoch: 12 }
    );
    assert_eq!(
        b.ask(release("b 12")).await,
        StoreReply::Lease(LeaseReply::Released)
    );

    // A lease without an expiry (someone set it by hand): held, for an unknown time.
    let _: () = redis::cmd("SET")
        .arg(cluster.leader())
        .arg("manual 9")
        .query_async(&mut admin)
        .await
        .expect("SET");
    assert_eq!(
        a.acquire("a", ttl).await,
        LeaseReply::Held { remaining: None }
    );
}

#[tokio::test]
async fn publishes_are_fenced_by_the_epoch_and_write_snapshots() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = admin(&server).await;
    let cluster = keys("c");
    let snapshot_key = cluster.snapshot("X:A");
    let mut old = Node::connect(&server.url(), "c").await;
    let mut leader = Node::connect(&server.url(), "c").await;
    let ttl = Duration::from_secs(5);
    assert_eq!(
        old.acquire("old", ttl).await,
        LeaseReply::Acquired { epoch: 1 }
    );
    assert_eq!(
        old.ask(StoreRequest::ReleaseLease {
            value: "old 1".to_owned()
        })
        .await,
        StoreReply::Lease(LeaseReply::Released)
    );
    assert_eq!(
        leader.acquire("new", ttl).await,
        LeaseReply::Acquired { epoch: 2 }
    );

    // The current epoch: snapshot stored, message published (the leader hears it too).
    let set = |text: &str| SnapshotWrite::Set(text.to_owned());
    assert!(leader.publish(2, "X:A", set("snap 2"), Some("m1")).await);
    assert_eq!(
        get(&mut admin, &snapshot_key).await.as_deref(),
        Some("snap 2")
    );
    assert_eq!(leader.message().await, stream("m1"));
    assert_eq!(old.message().await, stream("m1"));

    // An older epoch: nothing written, nothing published.
    assert!(!old.publish(1, "X:A", set("stale"), Some("stale")).await);
    assert!(!old.publish(1, "X:A", SnapshotWrite::Delete, None).await);
    assert_eq!(
        get(&mut admin, &snapshot_key).await.as_deref(),
        Some("snap 2")
    );

    // Keep leaves the snapshot; a message-less publish sends nothing; Delete removes it.
    assert!(
        leader
            .publish(2, "X:A", SnapshotWrite::Keep, Some("m2"))
            .await
    );
    assert_eq!(
        get(&mut admin, &snapshot_key).await.as_deref(),
        Some("snap 2")
    );
    assert!(leader.publish(2, "X:B", set("b"), None).await);
    assert!(leader.publish(2, "X:A", SnapshotWrite::Delete, None).await);
    assert_eq!(get(&mut admin, &snapshot_key).await, None);
    assert!(
        leader
            .publish(2, "X:A", SnapshotWrite::Keep, Some("m3"))
            .await
    );
    // The refused "stale" never came between them.
    assert_eq!(old.message().await, stream("m2"));
    assert_eq!(old.message().await, stream("m3"));

    // ReadSnapshot: absent, then present.
    let read = |symbol: &str| StoreRequest::ReadSnapshot {
        symbol: Arc::from(symbol),
    };
    assert_eq!(
        leader.ask(read("X:A")).await,
        StoreReply::Snapshot {
            symbol: Arc::from("X:A"),
            text: None
        }
    );
    assert_eq!(
        leader.ask(read("X:B")).await,
        StoreReply::Snapshot {
            symbol: Arc::from("X:B"),
            text: Some(b"b".to_vec())
        }
    );
}

#[tokio::test]
async fn a_burst_of_publishes_is_answered_in_order_among_other_requests() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut node = Node::connect(&server.url(), "c").await;
    assert_eq!(
        node.acquire("a", Duration::from_secs(30)).await,
        LeaseReply::Acquired { epoch: 1 }
    );
    // Queued at once, so the link takes them as pipelines; a read and a refused publish in
    // the middle must keep their places.
    let count = 1_000_usize;
    for index in 0..count {
        let text = index.to_string();
        node.link
            .send(publish(
                1,
                "X:A",
                SnapshotWrite::Set(text.clone()),
                Some(&text),
            ))
            .expect("room in the queue");
        if index == 500 {
            node.link
                .send(StoreRequest::ReadSnapshot {
                    symbol: Arc::from("X:A"),
                })
                .expect("room in the queue");
            node.link
                .send(publish(7, "X:A", SnapshotWrite::Delete, Some("fenced")))
                .expect("room in the queue");
        }
    }
    for index in 0..count {
        assert_eq!(
            node.reply().await,
            StoreReply::Published { accepted: true },
            "publish {index}"
        );
        if index == 500 {
            assert_eq!(
                node.reply().await,
                StoreReply::Snapshot {
                    symbol: Arc::from("X:A"),
                    text: Some(b"500".to_vec())
                }
            );
            assert_eq!(
                node.reply().await,
                StoreReply::Published { accepted: false }
            );
        }
    }
    for index in 0..count {
        assert_eq!(node.message().await, stream(&index.to_string()));
    }
    assert_eq!(node.link.counters(), link::LinkCounters::default());
}

#[tokio::test]
async fn demand_is_written_announced_read_expired_and_removed() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = admin(&server).await;
    let cluster = keys("c");
    let mut node = Node::connect(&server.url(), "c").await;
    let write = |relay: &str, entry: &str, ttl| StoreRequest::WriteDemand {
        relay: relay.to_owned(),
        entry: entry.to_owned(),
        ttl,
    };
    assert_eq!(
        node.ask(write("a", "entry a", Duration::from_secs(60)))
            .await,
        StoreReply::Done
    );
    assert_eq!(
        node.ask(write("b", "entry b", Duration::from_millis(300)))
            .await,
        StoreReply::Done
    );
    assert_eq!(node.message().await, demand_change("entry a"));
    assert_eq!(node.message().await, demand_change("entry b"));
    assert_eq!(
        node.demand().await,
        BTreeSet::from(["entry a".to_owned(), "entry b".to_owned()])
    );
    assert_eq!(
        members(&mut admin, &cluster.relays()).await,
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
    let left = pttl(&mut admin, &cluster.demand("a")).await;
    assert!(30_000 < left && left <= 60_000, "PTTL {left}");

    // b's entry expires: it leaves the answer, and its id leaves the set.
    let deadline = Instant::now() + DEADLINE;
    while node.demand().await.len() > 1 {
        assert!(Instant::now() < deadline, "b's entry never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.demand().await, BTreeSet::from(["entry a".to_owned()]));
    assert_eq!(
        members(&mut admin, &cluster.relays()).await,
        BTreeSet::from(["a".to_owned()])
    );

    // A clean leave: entry and id gone, the empty entry announced.
    assert_eq!(
        node.ask(StoreRequest::RemoveDemand {
            relay: "a".to_owned(),
            entry: "empty a".to_owned(),
        })
        .await,
        StoreReply::Done
    );
    assert_eq!(node.message().await, demand_change("empty a"));
    assert_eq!(node.demand().await, BTreeSet::new());
    assert_eq!(get(&mut admin, &cluster.demand("a")).await, None);
    assert_eq!(
        members(&mut admin, &cluster.relays()).await,
        BTreeSet::new()
    );
}

#[tokio::test]
async fn pruning_deletes_only_this_clusters_unkept_snapshots() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = admin(&server).await;
    let cluster = keys("c");
    let other = keys("other");
    // More than one SCAN page of snapshots, and keys that must survive.
    let mut setup = redis::pipe();
    for index in 0..2_500 {
        setup
            .cmd("SET")
            .arg(cluster.snapshot(&format!("S{index}")))
            .arg("x")
            .ignore();
    }
    setup
        .cmd("SET")
        .arg(other.snapshot("S7"))
        .arg("x")
        .ignore()
        .cmd("SET")
        .arg(other.snapshot("S8"))
        .arg("x")
        .ignore()
        .cmd("SET")
        .arg(cluster.leader())
        .arg("a 1")
        .ignore()
        .cmd("SET")
        .arg(cluster.snapshot("odd:*?[symbol]"))
        .arg("x")
        .ignore();
    let _: () = setup.query_async(&mut admin).await.expect("set up");

    let mut node = Node::connect(&server.url(), "c").await;
    let keep: Vec<Arc<str>> = ["S7", "S2499", "odd:*?[symbol]", "never stored"]
        .into_iter()
        .map(Arc::from)
        .collect();
    assert_eq!(
        node.ask(StoreRequest::PruneSnapshots { keep }).await,
        StoreReply::Done
    );
    let mut left: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut admin)
        .await
        .expect("KEYS");
    left.sort();
    assert_eq!(
        left,
        [
            "c:leader",
            "c:snapshot:S2499",
            "c:snapshot:S7",
            "c:snapshot:odd:*?[symbol]",
            "other:snapshot:S7",
            "other:snapshot:S8",
        ]
    );
}

#[tokio::test]
async fn channel_messages_reach_every_relay_and_oversized_ones_are_dropped() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = admin(&server).await;
    let cluster = keys("c");
    let mut leader = Node::connect(&server.url(), "c").await;
    let mut follower = Node::connect(&server.url(), "c").await;
    // Another cluster's channels are not this link's.
    let mut elsewhere = Node::connect(&server.url(), "elsewhere").await;
    assert_eq!(
        leader.acquire("a", Duration::from_secs(30)).await,
        LeaseReply::Acquired { epoch: 1 }
    );
    assert!(
        leader
            .publish(1, "X:A", SnapshotWrite::Keep, Some("hello"))
            .await
    );
    assert_eq!(follower.message().await, stream("hello"));
    assert_eq!(
        leader
            .ask(StoreRequest::WriteDemand {
                relay: "a".to_owned(),
                entry: "wants X:A".to_owned(),
                ttl: Duration::from_secs(30),
            })
            .await,
        StoreReply::Done
    );
    assert_eq!(follower.message().await, demand_change("wants X:A"));

    // Too big to forward, then one that fits: only the second arrives, the first is counted.
    let huge = vec![b'x'; MAX_MESSAGE_BYTES + 1];
    let biggest = vec![b'y'; MAX_MESSAGE_BYTES];
    for payload in [&huge, &biggest] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(cluster.updates())
            .arg(payload)
            .query_async(&mut admin)
            .await
            .expect("PUBLISH");
    }
    assert_eq!(
        follower.message().await,
        LinkEvent::Stream(Bytes::from(biggest))
    );
    assert_eq!(follower.link.counters().messages_oversized, 1);
    assert_eq!(follower.link.counters().messages_dropped, 0);

    // Nothing of cluster c reached the other cluster's link.
    assert_eq!(elsewhere.demand().await, BTreeSet::new());
    assert!(elsewhere.messages.is_empty(), "{:?}", elsewhere.messages);
    assert!(elsewhere.events.try_recv().is_err());
}

#[tokio::test]
async fn a_full_events_channel_drops_messages_but_never_replies() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = admin(&server).await;
    let cluster = keys("c");
    let capacity = 4;
    let mut node = Node::start(&server.url(), "c", capacity, TIMEOUT);
    assert_eq!(node.event().await, LinkEvent::Connected);
    // Nobody reads for a while: the first messages fill the channel, the rest are dropped.
    let sent = 50;
    for index in 0..sent {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(cluster.updates())
            .arg(index.to_string())
            .query_async(&mut admin)
            .await
            .expect("PUBLISH");
    }
    let dropped = (sent - capacity) as u64;
    eventually("the link drops what does not fit", || {
        let counted = node.link.counters().messages_dropped;
        async move { counted == dropped }
    })
    .await;
    // A request while the channel is full: its reply waits for room instead of vanishing.
    node.link
        .send(StoreRequest::ReadDemand)
        .expect("room in the queue");
    for index in 0..capacity {
        assert_eq!(node.event().await, stream(&index.to_string()));
    }
    assert_eq!(
        node.event().await,
        LinkEvent::Reply(StoreReply::Demand(Vec::new()))
    );
    assert_eq!(node.link.counters().messages_dropped, dropped);
}

#[tokio::test]
async fn a_full_request_queue_refuses_and_order_survives_a_stall() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut node = Node::start(&server.url(), "c", 2 * REQUEST_QUEUE, DEADLINE);
    assert_eq!(node.event().await, LinkEvent::Connected);
    server.pause();
    // The first request goes out and hangs; the queue behind it fills and then refuses.
    let read = |index: usize| StoreRequest::ReadSnapshot {
        symbol: Arc::from(index.to_string()),
    };
    let mut accepted = 0;
    let refused = loop {
        match node.link.send(read(accepted)) {
            Ok(()) => accepted += 1,
            Err(request) => break request,
        }
        assert!(accepted <= REQUEST_QUEUE + 1, "the queue is unbounded");
    };
    server.resume();
    assert_eq!(refused, read(accepted), "the refused request comes back");
    assert!(
        accepted == REQUEST_QUEUE || accepted == REQUEST_QUEUE + 1,
        "{accepted} accepted"
    );
    for index in 0..accepted {
        assert_eq!(
            node.reply().await,
            StoreReply::Snapshot {
                symbol: Arc::from(index.to_string()),
                text: None
            }
        );
    }
}

#[tokio::test]
async fn a_killed_server_is_reported_down_and_the_link_stays_down() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let mut node = Node::connect(&server.url(), "c").await;
    server.kill();
    let reason = node.down().await;
    assert!(
        reason.starts_with(&format!("redis://127.0.0.1:{}/0: ", server.port())),
        "{reason}"
    );
    // The task has ended: requests are refused, and a server coming back changes nothing
    // until the owner connects again.
    assert!(node.link.send(StoreRequest::ReadDemand).is_err());
    server.restart();
    let mut again = Node::connect(&server.url(), "c").await;
    assert_eq!(again.demand().await, BTreeSet::new());
}

#[tokio::test]
async fn a_paused_server_times_out_as_down() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let timeout = Duration::from_millis(300);
    let mut node = Node::start(&server.url(), "c", 64, timeout);
    assert_eq!(node.event().await, LinkEvent::Connected);
    server.pause();
    let started = Instant::now();
    node.link
        .send(StoreRequest::ReadDemand)
        .expect("room in the queue");
    let reason = node.down().await;
    server.resume();
    assert!(reason.contains("no answer within 300ms"), "{reason}");
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    // Connecting to a frozen server times out too.
    server.pause();
    let mut frozen = Node::start(&server.url(), "c", 64, timeout);
    let reason = frozen.down().await;
    server.resume();
    assert!(reason.contains("connecting"), "{reason}");
}

#[tokio::test]
async fn nothing_listening_is_reported_down() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut node = Node::start(&format!("redis://127.0.0.1:{port}"), "c", 64, TIMEOUT);
    let reason = node.down().await;
    assert!(reason.contains("connecting"), "{reason}");
    assert!(node.link.send(StoreRequest::ReadDemand).is_err());
}

#[tokio::test]
async fn rediss_attempts_tls_and_a_stalled_handshake_is_down() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // A TLS handshake against a plaintext server: the rustls path runs (its crypto provider
    // is found, nothing panics), the server never answers the ClientHello, and the link's
    // timeout turns that into Down rather than a hang.
    let url = format!("rediss://127.0.0.1:{}/0", server.port());
    let mut node = Node::start(&url, "c", 64, Duration::from_millis(300));
    let reason = node.down().await;
    assert_eq!(reason, format!("{url}: connecting: no answer within 300ms"));
}

#[tokio::test]
async fn closing_the_link_closes_its_connections_and_reports_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = admin(&server).await;
    async fn clients(admin: &mut MultiplexedConnection) -> usize {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(admin)
            .await
            .expect("CLIENT LIST");
        list.lines().count()
    }
    let before = clients(&mut admin).await;
    let Node {
        link, mut events, ..
    } = Node::connect(&server.url(), "c").await;
    assert_eq!(clients(&mut admin).await, before + 2);
    link.close();
    let deadline = Instant::now() + DEADLINE;
    while clients(&mut admin).await > before {
        assert!(Instant::now() < deadline, "connections left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("the task ended");
    assert_eq!(end, None, "no Down after close");

    // Dropping does the same.
    let node = Node::connect(&server.url(), "c").await;
    drop(node);
    let deadline = Instant::now() + DEADLINE;
    while clients(&mut admin).await > before {
        assert!(
            Instant::now() < deadline,
            "connections left open after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_password_never_shows() {
    let url = RedisUrl::parse("redis://user:secret@127.0.0.1:1/0").expect("valid");
    assert_eq!(url.to_string(), "redis://user:***@127.0.0.1:1/0");
    assert_eq!(
        format!("{url:?}"),
        r#"RedisUrl("redis://user:***@127.0.0.1:1/0")"#
    );
    assert_eq!(
        RedisUrl::parse("rediss://:secret@[::1]:6380/3#insecure")
            .expect("valid")
            .to_string(),
        "rediss://:***@[::1]:6380/3#insecure"
    );
    assert_eq!(
        RedisUrl::parse("redis://localhost")
            .expect("valid")
            .to_string(),
        "redis://localhost:6379/0"
    );
    for bad in [
        "redis://user:secret@127.0.0.1:1/not-a-db",
        "redis://user:secret@0.0.0.0:1/0",
        "rediss://user:secret@host/0#other",
        "http://user:secret@127.0.0.1:1/0",
        "unix:///tmp/redis.sock?pass=secret",
        "user:secret@127.0.0.1:1",
    ] {
        let error = RedisUrl::parse(bad).expect_err(bad);
        assert!(!error.contains("secret"), "{bad}: {error}");
        assert!(error.starts_with("the cluster store URL"), "{bad}: {error}");
    }

    // Nothing listens on port 1: the reason names the URL without the password.
    let mut node = Node::start("redis://user:secret@127.0.0.1:1/0", "c", 64, TIMEOUT);
    let reason = node.down().await;
    assert!(!reason.contains("secret"), "{reason}");
    assert!(
        reason.starts_with("redis://user:***@127.0.0.1:1/0: connecting"),
        "{reason}"
    );

    // A server that refuses the password: the error is the server's, the password is not in it.
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = admin(&server).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("the-real-one")
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET requirepass");
    let wrong = format!("redis://:secret@127.0.0.1:{}/0", server.port());
    let mut refused = Node::start(&wrong, "c", 64, TIMEOUT);
    let reason = refused.down().await;
    assert!(!reason.contains("secret"), "{reason}");
    let right = format!("redis://:the-real-one@127.0.0.1:{}/0", server.port());
    let mut node = Node::connect(&right, "c").await;
    assert_eq!(node.demand().await, BTreeSet::new());
}
