//! The relay's side of cluster mode (issue 14): the I/O that carries out what the core's
//! [`tickwire_core::cluster`] machines decide.
//!
//! - [`link`]: the connection to the cluster's store (Redis), which executes
//!   [`tickwire_core::cluster::StoreRequest`]s in order, forwards the cluster's channels and
//!   reports when it fails. It never reconnects or retries by itself.

pub(crate) mod link;
