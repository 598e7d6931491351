//! A string that never shows itself.

use serde::{Deserialize, Serialize};

/// A password, cookie value or token. `Debug` and `Display` print `<redacted>`; the value is
/// only reachable through [`Secret::expose`], so it cannot end up in an error message or a log
/// line by accident. Serialized as the plain string (for the session file, which only its owner
/// can read).
///
/// ```
/// use tickwire_http::Secret;
///
/// let password = Secret::from("hunter2");
/// assert_eq!(format!("{password} {password:?}"), "<redacted> <redacted>");
/// assert_eq!(password.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let secret = Secret::from("s3cr3t-value");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(<redacted>)");
        assert_eq!(secret.expose(), "s3cr3t-value");
    }

    #[test]
    fn serializes_as_the_plain_string() {
        let secret = Secret::from("abc");
        assert_eq!(
            serde_json::to_string(&secret).ok().as_deref(),
            Some("\"abc\"")
        );
        let back: Secret = serde_json::from_str("\"abc\"").unwrap_or_default();
        assert_eq!(back, secret);
    }
}
