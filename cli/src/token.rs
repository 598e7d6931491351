//! A rejected auth token, named without revealing it: `stream`, `history` and `relay` have a
//! fixed token and no way to refresh it, so a rejection is final for them.

use std::time::{SystemTime, UNIX_EPOCH};

use tickwire_core::client::{ANONYMOUS_TOKEN, DisconnectCause};
use tickwire_driver::Feed;

use crate::Failure;

/// The failure to stop with once the server has rejected `token`, if it has.
pub(crate) fn rejected(feed: &Feed, token: &str) -> Option<Failure> {
    let rejections = feed
        .status()
        .client
        .counters
        .disconnects
        .get(DisconnectCause::BadAuthToken);
    (rejections > 0).then(|| {
        Failure::Message(format!(
            "the server rejected the auth token ({}) from TICKWIRE_AUTH_TOKEN; \
             nothing can refresh it here, so retrying would never work",
            describe(token)
        ))
    })
}

/// What a person needs to tell which token it was: its kind, length and, for a JWT, its expiry.
/// Never any of its characters.
pub(crate) fn describe(token: &str) -> String {
    if token == ANONYMOUS_TOKEN {
        return "the anonymous token".to_owned();
    }
    let length = token.chars().count();
    match jwt_expiry(token) {
        Some(expiry) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            let now = i64::try_from(now).unwrap_or(i64::MAX);
            let when = if expiry <= now {
                format!("expired {} ago", ago(now.saturating_sub(expiry)))
            } else {
                format!("expires in {}", ago(expiry.saturating_sub(now)))
            };
            format!("a {length}-character JWT that {when}, exp {expiry}")
        }
        None => format!("a {length}-character token"),
    }
}

fn ago(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} days", s / 86_400),
    }
}

/// The `exp` claim of a JWT.
fn jwt_expiry(token: &str) -> Option<i64> {
    i64::try_from(tickwire_http::jwt::claims(token)?.exp?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_described_without_their_characters() {
        // {"alg":"none"} . {"exp":1700000000,"user_id":1} . signature
        let jwt = "eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDAwMDAsInVzZXJfaWQiOjF9.c2lnbmF0dXJl";
        let described = describe(jwt);
        assert!(
            described.contains("JWT that expired") && described.contains("exp 1700000000"),
            "{described}"
        );
        assert!(!described.contains("eyJ") && !described.contains("c2ln"));
        assert_eq!(describe("secret-value"), "a 12-character token");
        assert_eq!(describe(ANONYMOUS_TOKEN), "the anonymous token");
        assert_eq!(describe("a.b!.c"), "a 6-character token");
    }
}
