//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits), the second factor
//! TradingView asks for.
//!
//! ```
//! use tickwire_http::totp;
//!
//! let secret = totp::decode_secret("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
//! assert_eq!(totp::code_at(&secret, 59), "287082");
//! ```

use ring::hmac;

/// Seconds each code is valid for.
pub const STEP_SECS: u64 = 30;

/// A TOTP secret that is not base32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSecret;

impl std::fmt::Display for BadSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("the TOTP secret is not base32 (letters A-Z and digits 2-7)")
    }
}

impl std::error::Error for BadSecret {}

/// Decodes a base32 secret as authenticator apps show it: case, spaces, dashes and `=` padding
/// do not matter.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, BadSecret> {
    let normalized: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '='))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if normalized.is_empty() {
        return Err(BadSecret);
    }
    data_encoding::BASE32_NOPAD
        .decode(normalized.as_bytes())
        .map_err(|_| BadSecret)
}

/// The 6-digit code for `secret` at `unix_secs`.
pub fn code_at(secret: &[u8], unix_secs: u64) -> String {
    code_for_step(secret, unix_secs / STEP_SECS)
}

/// The 6-digit code for time step `step` (Unix seconds / 30).
pub fn code_for_step(secret: &[u8], step: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let digest = tag.as_ref();
    // Dynamic truncation (RFC 4226 5.3): the low nibble of the last byte picks four bytes.
    let offset = usize::from(digest.last().copied().unwrap_or(0) & 0x0f);
    let mut word = [0u8; 4];
    if let Some(bytes) = digest.get(offset..offset + 4) {
        word.copy_from_slice(bytes);
    }
    let value = u32::from_be_bytes(word) & 0x7fff_ffff;
    format!("{:06}", value % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 appendix B, SHA1 rows (the secret is "12345678901234567890"; 8 digits there, the
    // last 6 here).
    #[test]
    fn matches_the_rfc_6238_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code_at(secret, time), &eight[2..], "at {time}");
        }
    }

    #[test]
    fn secrets_decode_as_apps_show_them() {
        let expected = b"12345678901234567890".to_vec();
        assert_eq!(
            decode_secret("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            Ok(expected.clone())
        );
        assert_eq!(
            decode_secret("gezd gnbv gy3t qojq gezd gnbv gy3t qojq"),
            Ok(expected)
        );
        assert_eq!(decode_secret("not base32!"), Err(BadSecret));
        assert_eq!(decode_secret(" "), Err(BadSecret));
    }
}
