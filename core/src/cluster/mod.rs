//! Decisions of a relay cluster: several relays behind a load balancer sharing one upstream
//! feed through a store (Redis), without I/O.
//!
//! - [`Lease`]: which relay holds the upstream feed, as a lease in the store with a fencing
//!   epoch that grows on every takeover.
//! - [`Demand`]: the union of what every live relay's clients want, which the leader carries.
//! - [`Keys`]: the names of every key and channel of a cluster, all under the cluster's
//!   prefix so several clusters can share one store.
//!
//! - [`Node`]: one relay of the cluster, composing its hub, the lease, the demand, the
//!   stream and (while it leads) the upstream feed; the relay's Redis link executes its
//!   [`StoreRequest`]s.

pub mod demand;
pub mod lease;
pub mod node;
pub mod store;
pub mod stream;

use std::fmt;

pub use demand::{Demand, MAX_RELAYS};
pub use lease::{Lease, LeaseConfig, LeaseCounters, LeaseEvent, LeaseReply, LeaseRequest, Role};
pub use node::{Node, NodeConfig, NodeCounters, NodeOutput, StoreState};
pub use store::{SnapshotWrite, StoreReply, StoreRequest};
pub use stream::{Follower, FollowerCounters, FollowerOutput, Published, Publisher, StreamError};

/// Longest cluster name, in bytes.
pub const MAX_CLUSTER_NAME: usize = 64;

/// A cluster name that cannot prefix keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster name {shown:?}: use 1 to {MAX_CLUSTER_NAME} letters, digits, '-', '_' or '.'")]
pub struct ClusterNameError {
    shown: String,
}

/// The keys and channels of one cluster, each `NAME:` followed by its role:
///
/// | key or channel | what |
/// | --- | --- |
/// | `NAME:leader` | the lease: `"<relay id> <epoch>"`, with the lease's TTL |
/// | `NAME:epoch` | the fencing epoch, incremented by every takeover |
/// | `NAME:relays` | the set of relay ids that published demand |
/// | `NAME:demand:<relay id>` | that relay's wanted symbols, with a TTL |
/// | `NAME:demand-changes` (channel) | every demand entry written, as it is written |
/// | `NAME:updates` (channel) | the leader's stream (see [`stream`]) |
/// | `NAME:snapshot:<symbol>` | the symbol's latest state as a `snapshot` frame with its epoch and seq |
///
/// ```
/// use tickwire_core::cluster::Keys;
///
/// let keys = Keys::new("prod-eu").unwrap();
/// assert_eq!(keys.leader(), "prod-eu:leader");
/// assert_eq!(keys.demand("relay-7"), "prod-eu:demand:relay-7");
/// assert!(Keys::new("has space").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of cluster `name`.
    ///
    /// # Errors
    /// [`ClusterNameError`] for an empty, long or odd name.
    pub fn new(name: &str) -> Result<Keys, ClusterNameError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_CLUSTER_NAME
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
        if !valid {
            return Err(ClusterNameError {
                shown: name.chars().take(MAX_CLUSTER_NAME).collect(),
            });
        }
        Ok(Keys {
            prefix: format!("{name}:"),
        })
    }

    /// The lease.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// The epoch counter.
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// The set of relay ids.
    pub fn relays(&self) -> String {
        format!("{}relays", self.prefix)
    }

    /// One relay's demand.
    pub fn demand(&self, relay: &str) -> String {
        format!("{}demand:{relay}", self.prefix)
    }

    /// The channel announcing every demand entry written.
    pub fn demand_changes(&self) -> String {
        format!("{}demand-changes", self.prefix)
    }

    /// The update stream's channel.
    pub fn updates(&self) -> String {
        format!("{}updates", self.prefix)
    }

    /// A symbol's stored snapshot.
    pub fn snapshot(&self, symbol: &str) -> String {
        format!("{}snapshot:{symbol}", self.prefix)
    }

    /// The pattern matching every stored snapshot (for `SCAN … MATCH`).
    pub fn snapshot_pattern(&self) -> String {
        format!("{}snapshot:*", self.prefix)
    }
}

impl fmt::Display for Keys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.prefix.trim_end_matches(':'))
    }
}
