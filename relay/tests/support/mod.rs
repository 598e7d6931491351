//! What the relay's test binaries share: a real `redis-server` for the cluster tests.
// Each test binary uses a different part of this.
#![allow(dead_code)]

pub(crate) mod redis;
