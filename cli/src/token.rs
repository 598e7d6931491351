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
            "the server rejected the auth token ({}) from --auth-token / TICKWIRE_AUTH_TOKEN; \
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

/// The `exp` claim of a JWT (`header.payload.signature`, base64url without padding).
fn jwt_expiry(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let claims: serde_json::Value = serde_json::from_slice(&base64url(payload)?).ok()?;
    claims.get("exp")?.as_i64()
}

/// Decodes unpadded base64url; `None` on any character outside the alphabet.
fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(bytes)
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
        assert_eq!(base64url("aGk"), Some(b"hi".to_vec()));
    }
}
