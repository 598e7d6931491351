//! The few cookies one request chain carries: `Set-Cookie` parsed by hand (`name=value` before
//! the first `;`), looked up by name, sent back as one `Cookie` header.

use crate::Secret;

/// Longest cookie value kept (browsers keep 4 KiB per cookie).
const MAX_VALUE: usize = 4096;
/// Longest cookie name kept.
const MAX_NAME: usize = 256;
/// Most cookies one chain keeps; more are dropped.
const MAX_COOKIES: usize = 32;

/// Whether `value` is made of RFC 6265 cookie-octets (optionally in double quotes), so it can go
/// back into a `Cookie` header as is.
pub(crate) fn is_cookie_value(value: &str) -> bool {
    let inner = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(value);
    inner
        .bytes()
        .all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e))
}

/// Whether `name` is an HTTP token (what a cookie name must be).
pub(crate) fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One `Set-Cookie` header: the name, and the value or `None` when the header deletes the cookie
/// (empty value, `Max-Age` of zero or less, an `Expires` in 1970). `None` for a header that is
/// not a usable cookie.
pub(crate) fn parse_set_cookie(header: &str) -> Option<(String, Option<Secret>)> {
    let mut parts = header.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let name = name.trim();
    let value = value.trim();
    if !is_cookie_name(name) || value.len() > MAX_VALUE || !is_cookie_value(value) {
        return None;
    }
    let mut deleted = value.is_empty() || value == "\"\"";
    for attribute in parts {
        let Some((key, attribute_value)) = attribute.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let attribute_value = attribute_value.trim();
        if key.eq_ignore_ascii_case("max-age") {
            if attribute_value
                .parse::<i64>()
                .is_ok_and(|seconds| seconds <= 0)
            {
                deleted = true;
            }
        } else if key.eq_ignore_ascii_case("expires") && attribute_value.contains("1970") {
            deleted = true;
        }
    }
    let value = if deleted {
        None
    } else {
        Some(Secret::from(value))
    };
    Some((name.to_owned(), value))
}

/// Cookies by name, in the order first set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Jar {
    cookies: Vec<(String, Secret)>,
}

impl Jar {
    /// Sets (or replaces) one cookie; `None` deletes it.
    pub(crate) fn set(&mut self, name: &str, value: Option<Secret>) {
        let position = self.cookies.iter().position(|(known, _)| known == name);
        match (position, value) {
            (Some(index), Some(value)) => {
                if let Some(slot) = self.cookies.get_mut(index) {
                    slot.1 = value;
                }
            }
            (Some(index), None) => {
                self.cookies.remove(index);
            }
            (None, Some(value)) if self.cookies.len() < MAX_COOKIES => {
                self.cookies.push((name.to_owned(), value));
            }
            (None, _) => {}
        }
    }

    /// The value of cookie `name`.
    #[cfg(test)]
    pub(crate) fn get(&self, name: &str) -> Option<&Secret> {
        self.cookies
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value)
    }

    /// The values, to keep them out of anything quoted from a response.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Secret> {
        self.cookies.iter().map(|(_, value)| value)
    }

    /// `a=1; b=2`, or `None` when the jar is empty.
    pub(crate) fn header(&self) -> Option<Secret> {
        if self.cookies.is_empty() {
            return None;
        }
        let text = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={}", value.expose()))
            .collect::<Vec<_>>()
            .join("; ");
        Some(Secret::from(text))
    }
}

/// What a request chain's responses did to the cookies: each name with its last value, `None`
/// when it was deleted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Received {
    changes: Vec<(String, Option<Secret>)>,
}

impl Received {
    pub(crate) fn record(&mut self, name: &str, value: Option<Secret>) {
        if let Some(slot) = self.changes.iter_mut().find(|(known, _)| known == name) {
            slot.1 = value;
        } else if self.changes.len() < MAX_COOKIES {
            self.changes.push((name.to_owned(), value));
        }
    }

    /// `Some(Some(value))` when the chain set `name`, `Some(None)` when it deleted it, `None`
    /// when it did not touch it.
    pub(crate) fn get(&self, name: &str) -> Option<Option<&Secret>> {
        self.changes
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_ref())
    }

    /// The value the chain set for `name` (not deleted).
    pub(crate) fn value(&self, name: &str) -> Option<&Secret> {
        self.get(name).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(header: &str) -> Option<(String, Option<String>)> {
        parse_set_cookie(header)
            .map(|(name, value)| (name, value.map(|secret| secret.expose().to_owned())))
    }

    #[test]
    fn set_cookie_takes_name_and_value_before_the_first_semicolon() {
        assert_eq!(
            value("sessionid=abc123; Domain=.tradingview.com; Path=/; HttpOnly; Secure"),
            Some(("sessionid".into(), Some("abc123".into())))
        );
        assert_eq!(
            value(" device_t = x=y ; Max-Age=100"),
            Some(("device_t".into(), Some("x=y".into())))
        );
        assert_eq!(
            value("quoted=\"v\""),
            Some(("quoted".into(), Some("\"v\"".into())))
        );
    }

    #[test]
    fn deletions_are_recognised() {
        assert_eq!(
            value("sessionid=; Path=/"),
            Some(("sessionid".into(), None))
        );
        assert_eq!(
            value("sessionid=x; Max-Age=0"),
            Some(("sessionid".into(), None))
        );
        assert_eq!(
            value("sessionid=x; max-age=-1"),
            Some(("sessionid".into(), None))
        );
        assert_eq!(
            value("sessionid=x; expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(("sessionid".into(), None))
        );
    }

    #[test]
    fn hostile_set_cookie_headers_are_ignored() {
        assert_eq!(value("no equals sign"), None);
        assert_eq!(value("=value"), None);
        assert_eq!(value("bad name=value"), None);
        assert_eq!(value("a=has space"), None);
        assert_eq!(value("a=comma,inside"), None);
        assert_eq!(value("a=back\\slash"), None);
        assert_eq!(value(&format!("a={}", "x".repeat(MAX_VALUE + 1))), None);
        assert_eq!(value(&format!("{}=x", "n".repeat(MAX_NAME + 1))), None);
    }

    #[test]
    fn jar_replaces_deletes_and_bounds() {
        let mut jar = Jar::default();
        assert!(jar.header().is_none());
        jar.set("a", Some("1".into()));
        jar.set("b", Some("2".into()));
        jar.set("a", Some("3".into()));
        assert_eq!(
            jar.header().map(|h| h.expose().to_owned()),
            Some("a=3; b=2".into())
        );
        jar.set("a", None);
        assert_eq!(jar.get("b").map(Secret::expose), Some("2"));
        assert!(jar.get("a").is_none());
        for index in 0..100 {
            jar.set(&format!("c{index}"), Some("v".into()));
        }
        assert_eq!(jar.cookies.len(), MAX_COOKIES);
    }
}
