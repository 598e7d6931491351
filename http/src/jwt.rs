//! The auth token's claims, read without checking the signature (the client only needs to know
//! when to fetch a new one).
//!
//! ```
//! use tickwire_http::jwt;
//!
//! // {"alg":"RS512","typ":"JWT"} . {"user_id":42,"exp":1700003600,"iat":1700000000,"plan":"pro"} . sig
//! let token = "eyJhbGciOiJSUzUxMiIsInR5cCI6IkpXVCJ9.\
//!              eyJ1c2VyX2lkIjo0MiwiZXhwIjoxNzAwMDAzNjAwLCJpYXQiOjE3MDAwMDAwMDAsInBsYW4iOiJwcm8ifQ.c2ln";
//! let claims = jwt::claims(token).unwrap();
//! assert_eq!(claims.exp, Some(1_700_003_600));
//! assert_eq!(claims.user_id, Some(42));
//! assert_eq!(claims.remaining_at(1_700_003_000), Some(std::time::Duration::from_secs(600)));
//! ```

use std::time::Duration;

use serde_json::Value;

/// Longest token looked at.
pub const MAX_TOKEN: usize = 16 * 1024;

/// What the client reads from the token's payload. Every field is optional: a claim that is
/// missing or of the wrong type is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Claims {
    /// Expiry, Unix seconds.
    pub exp: Option<u64>,
    /// Issued at, Unix seconds.
    pub iat: Option<u64>,
    /// The user id.
    pub user_id: Option<u64>,
    /// The plan (`plan`, else `prodplan`).
    pub plan: Option<String>,
}

impl Claims {
    /// Time left until `exp` at `now_unix`; `Some(ZERO)` once it passed, `None` without `exp`.
    pub fn remaining_at(&self, now_unix: u64) -> Option<Duration> {
        self.exp
            .map(|exp| Duration::from_secs(exp.saturating_sub(now_unix)))
    }
}

/// The claims of a JWT (`header.payload.signature`, base64url, padding tolerated), or `None`
/// when `token` is not one (too long, not three parts, not base64url, not a JSON object).
pub fn claims(token: &str) -> Option<Claims> {
    let token = token.trim();
    if token.len() > MAX_TOKEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.trim_end_matches('=').as_bytes())
        .ok()?;
    let payload: Value = serde_json::from_slice(&bytes).ok()?;
    let payload = payload.as_object()?;
    let seconds = |name: &str| payload.get(name).and_then(unsigned);
    let text = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_str)
            .map(|text| crate::text::clean(text, 100))
            .filter(|text| !text.is_empty())
    };
    Some(Claims {
        exp: seconds("exp"),
        iat: seconds("iat"),
        user_id: seconds("user_id"),
        plan: text("plan").or_else(|| text("prodplan")),
    })
}

/// A non-negative integer, also when written as an integral float (`1.7e9`).
fn unsigned(value: &Value) -> Option<u64> {
    if let Some(number) = value.as_u64() {
        return Some(number);
    }
    let float = value.as_f64()?;
    // 2^53: past it floats are not exact integers any more.
    let in_range = (0.0..=9_007_199_254_740_992.0).contains(&float);
    if in_range && float.fract() == 0.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return Some(float as u64);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &str) -> String {
        let encode = |text: &str| data_encoding::BASE64URL_NOPAD.encode(text.as_bytes());
        format!(
            "{}.{}.{}",
            encode(r#"{"alg":"RS512","typ":"JWT"}"#),
            encode(payload),
            encode("opaque signature bytes")
        )
    }

    #[test]
    fn reads_the_contract_payload() {
        let claims = claims(&token(
            r#"{"user_id":7,"exp":1700003600,"iat":1700000000,"plan":"pro_premium","perm":"","prodplan":"x"}"#,
        ))
        .unwrap();
        assert_eq!(
            claims,
            Claims {
                exp: Some(1_700_003_600),
                iat: Some(1_700_000_000),
                user_id: Some(7),
                plan: Some("pro_premium".into())
            }
        );
        assert_eq!(claims.remaining_at(1_800_000_000), Some(Duration::ZERO));
    }

    #[test]
    fn tolerates_padding_and_odd_claims() {
        let padded = {
            let encode = |text: &str| data_encoding::BASE64URL.encode(text.as_bytes());
            format!("{}.{}.{}", encode("{}"), encode(r#"{"exp":1}"#), "sig")
        };
        assert!(padded.contains('='));
        assert_eq!(claims(&padded).and_then(|c| c.exp), Some(1));
        let odd = claims(&token(
            r#"{"exp":"soon","iat":-5,"user_id":1.7e9,"prodplan":"pro"}"#,
        ))
        .unwrap();
        assert_eq!(odd.exp, None);
        assert_eq!(odd.iat, None);
        assert_eq!(odd.user_id, Some(1_700_000_000));
        assert_eq!(odd.plan, Some("pro".into()));
        let huge = claims(&token(
            r#"{"exp":1e300,"iat":123456789012345678901234567890}"#,
        ))
        .unwrap();
        assert_eq!((huge.exp, huge.iat), (None, None));
        assert_eq!(claims(&token("{}")).unwrap(), Claims::default());
        assert_eq!(claims(&token("{}")).unwrap().remaining_at(0), None);
    }

    #[test]
    fn non_tokens_have_no_claims() {
        for text in [
            "",
            "unauthorized_user_token",
            "a.b",
            "a.b.c.d",
            "eyJ.!!!.sig",
            &token("[1,2,3]"),
            &token("not json"),
            &token(r#"{"exp":1"#),
        ] {
            assert_eq!(claims(text), None, "{text}");
        }
        let long = token(&format!(r#"{{"exp":1,"pad":"{}"}}"#, "x".repeat(MAX_TOKEN)));
        assert_eq!(claims(&long), None);
        // Non-UTF-8 payload bytes.
        let binary = format!(
            "e30.{}.sig",
            data_encoding::BASE64URL_NOPAD.encode(b"\xff\xfe{}")
        );
        assert_eq!(claims(&binary), None);
    }
}
