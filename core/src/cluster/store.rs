//! What a relay asks of the cluster's store (Redis) and what it answers, as plain values: the
//! relay's link executes each [`StoreRequest`] with the commands its docs name and reports the
//! [`StoreReply`], in request order. The link decides nothing: when to connect, what to ask
//! and what an answer means are the cluster node's.

use std::sync::Arc;
use std::time::Duration;

/// What to do with a symbol's stored snapshot when a message is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotWrite {
    /// Leave it.
    Keep,
    /// `SET NAME:snapshot:<symbol> <text>`.
    Set(String),
    /// `DEL NAME:snapshot:<symbol>` (the symbol was rejected or left the upstream).
    Delete,
}

/// One request for the store. Keys are those of [`super::Keys`] for the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRequest {
    /// Atomically (one script): `SET NAME:leader <relay> NX PX ttl`; if that succeeded,
    /// `INCR NAME:epoch` (raised to `floor + 1` if it is not above `floor`) and set the
    /// lease's value to `"<relay> <epoch>"` with the same TTL, answering
    /// [`super::LeaseReply::Acquired`]; otherwise answer [`super::LeaseReply::Held`] with
    /// the key's `PTTL` (`None` when it has none).
    AcquireLease {
        /// This relay's id.
        relay: String,
        /// The lease's TTL.
        ttl: Duration,
        /// The highest epoch this relay has seen: a store restarted empty must not hand out
        /// an epoch that an earlier leader already used.
        floor: u64,
    },
    /// If `GET NAME:leader` is `value`, `PEXPIRE` it to `ttl`: `Renewed`; otherwise `Lost`.
    RenewLease {
        /// `"<relay> <epoch>"`.
        value: String,
        /// The lease's TTL.
        ttl: Duration,
    },
    /// If `GET NAME:leader` is `value`, `DEL` it: `Released`; otherwise `Lost`.
    ReleaseLease {
        /// `"<relay> <epoch>"`.
        value: String,
    },
    /// `SET NAME:demand:<relay> <entry> PX ttl`, `SADD NAME:relays <relay>`, then
    /// `PUBLISH NAME:demand-changes <entry>`: answered [`StoreReply::Done`].
    WriteDemand {
        /// This relay's id.
        relay: String,
        /// The demand entry (see [`super::demand`]).
        entry: String,
        /// How long the entry lives without a rewrite.
        ttl: Duration,
    },
    /// `DEL NAME:demand:<relay>`, `SREM NAME:relays <relay>`, then
    /// `PUBLISH NAME:demand-changes <entry>` (an entry with no symbols): [`StoreReply::Done`].
    RemoveDemand {
        /// This relay's id.
        relay: String,
        /// The empty entry to announce.
        entry: String,
    },
    /// `SMEMBERS NAME:relays`, `GET NAME:demand:<id>` for each, and `SREM` of the ids whose
    /// entry has expired: [`StoreReply::Demand`] with the entries found.
    ReadDemand,
    /// Fenced, atomically (one script): only if `GET NAME:epoch` is `epoch`, carry out
    /// `snapshot` on `NAME:snapshot:<symbol>` and then `PUBLISH NAME:updates <message>` (when
    /// there is one); [`StoreReply::Published`] says whether it was.
    Publish {
        /// The publisher's epoch.
        epoch: u64,
        /// The symbol whose snapshot `snapshot` concerns.
        symbol: Option<Arc<str>>,
        /// What to do with that snapshot.
        snapshot: SnapshotWrite,
        /// The stream message.
        message: Option<String>,
    },
    /// `GET NAME:snapshot:<symbol>`: [`StoreReply::Snapshot`].
    ReadSnapshot {
        /// The symbol.
        symbol: Arc<str>,
    },
    /// Delete every `NAME:snapshot:*` key (found with `SCAN`) whose symbol is not in `keep`:
    /// a new leader's clean-up of what earlier leaders left. [`StoreReply::Done`].
    PruneSnapshots {
        /// The symbols whose snapshots stay.
        keep: Vec<Arc<str>>,
    },
}

/// The store's answer to one [`StoreRequest`], in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    /// The answer to a lease request.
    Lease(super::LeaseReply),
    /// Carried out.
    Done,
    /// Every live relay's demand entry.
    Demand(Vec<String>),
    /// Whether the fenced publish was carried out (false: a newer leader's epoch is stored).
    Published {
        /// Carried out.
        accepted: bool,
    },
    /// A symbol's stored snapshot, if any.
    Snapshot {
        /// The symbol.
        symbol: Arc<str>,
        /// Its text.
        text: Option<Vec<u8>>,
    },
}
