//! From session cookies to the WebSocket auth token: the signed-in home page embeds the user
//! object, `auth_token` included. No password is involved, so this is also how a token is
//! refreshed before it expires.
//!
//! ```no_run
//! use tickwire_http::session::Cookies;
//! use tickwire_http::token;
//! use tickwire_http::{HttpClient, HttpConfig};
//!
//! let client = HttpClient::new(HttpConfig::default());
//! let token = token::fetch_auth_token(&client, &Cookies::new("sessionid value"))?;
//! println!("{} until {:?}", token.user.username, token.claims.and_then(|c| c.exp));
//! # Ok::<(), tickwire_http::token::TokenError>(())
//! ```

use serde_json::Value;

use crate::client::{ACCEPT_HTML, Request};
use crate::jwt::{self, Claims};
use crate::session::{Cookies, UserInfo};
use crate::{HttpClient, HttpError, Secret};

/// How many occurrences of each marker are tried before giving up on a page.
const MAX_ATTEMPTS: usize = 16;

/// An auth token, who it is for, its claims when it is a JWT, and the cookies when the home
/// page refreshed them (save those in the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthToken {
    /// The token for `set_auth_token`.
    pub token: Secret,
    /// Who it belongs to.
    pub user: UserInfo,
    /// Its claims (`exp` tells when to fetch a new one).
    pub claims: Option<Claims>,
    /// The session cookies after the page's `Set-Cookie` headers, when they changed any.
    pub updated_cookies: Option<Cookies>,
}

/// Why no token came back.
///
/// ```
/// use tickwire_http::token::TokenError;
///
/// assert_eq!(
///     TokenError::SessionExpired.to_string(),
///     "the session is signed out or expired: run `tickwire login`"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The page is the anonymous one: the cookies are signed out or expired.
    #[error("the session is signed out or expired: run `tickwire login`")]
    SessionExpired,
    /// The request failed.
    #[error("fetching the auth token failed: {0}")]
    Http(#[from] HttpError),
}

/// GETs `{www}/` with the session cookies (following redirects, keeping the cookies the chain
/// sets) and reads the user object off the page.
pub fn fetch_auth_token(client: &HttpClient, cookies: &Cookies) -> Result<AuthToken, TokenError> {
    let mut request = Request::get("home page", format!("{}/", client.bases().www));
    request.accept = ACCEPT_HTML;
    request.cookies = cookies.jar();
    let reply = client.execute(request)?.success()?;
    let page = String::from_utf8_lossy(&reply.body);
    let (user, token) = extract_user(&page).ok_or(TokenError::SessionExpired)?;
    let changed = ["sessionid", "sessionid_sign", "device_t"]
        .iter()
        .any(|name| reply.received.get(name).is_some());
    let updated_cookies = if changed {
        Cookies::from_chain(Some(cookies), &reply.received).filter(|new| new != cookies)
    } else {
        None
    };
    Ok(AuthToken {
        claims: jwt::claims(token.expose()),
        token,
        user,
        updated_cookies,
    })
}

/// The user and token on a home page: `var user = {...}` first, else a `"user":{...}` object
/// that holds `auth_token`. An object counts only with `id`, `username` and a non-empty
/// `auth_token`.
pub(crate) fn extract_user(page: &str) -> Option<(UserInfo, Secret)> {
    for marker in ["var user = ", "var user=", "\"user\":{", "\"user\": {"] {
        // The object starts where the marker's `{` is (or right after the `=` marker).
        let object_offset = marker.find('{').unwrap_or(marker.len());
        for (start, _) in page.match_indices(marker).take(MAX_ATTEMPTS) {
            let Some(rest) = page.get(start.saturating_add(object_offset)..) else {
                continue;
            };
            if let Some(found) = first_json_value(rest).as_ref().and_then(accept_user) {
                return Some(found);
            }
        }
    }
    None
}

/// The JSON value at the start of `text`, whatever follows it.
fn first_json_value(text: &str) -> Option<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()?
        .ok()
}

fn accept_user(value: &Value) -> Option<(UserInfo, Secret)> {
    let token = value.get("auth_token")?.as_str()?.trim();
    if token.is_empty()
        || token.len() > jwt::MAX_TOKEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    Some((UserInfo::from_json(value)?, Secret::from(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = r#"{"id":1234,"username":"alice","first_name":"","is_pro":true,"pro_plan":"pro_premium","auth_token":"eyJh.eyJi.c2ln","session_hash":"h","private_channel":"p"}"#;

    fn found(page: &str) -> Option<(u64, String)> {
        extract_user(page).map(|(user, token)| (user.id, token.expose().to_owned()))
    }

    #[test]
    fn reads_var_user_after_unrelated_ids() {
        let page = format!(
            "<html><script>window.initData = {{}};\nvar config = {{\"id\":1,\"widgets\":[{{\"id\":2}}]}};\nvar user = {USER};\nvar other = 1;</script></html>"
        );
        assert_eq!(found(&page), Some((1234, "eyJh.eyJi.c2ln".into())));
    }

    #[test]
    fn falls_back_to_a_user_object_with_a_token() {
        let page = format!(
            r#"<script>window.__DATA__ = {{"user":{{"id":5,"username":"anon"}},"x":{{"user":{USER}}}}};</script>"#
        );
        assert_eq!(found(&page), Some((1234, "eyJh.eyJi.c2ln".into())));
    }

    #[test]
    fn anonymous_and_hostile_pages_have_no_token() {
        for page in [
            "",
            "<html><body>Welcome</body></html>",
            "var user = {\"id\":1,\"username\":\"a\"};",
            "var user = {\"id\":1,\"username\":\"a\",\"auth_token\":\"\"};",
            "var user = {\"username\":\"a\",\"auth_token\":\"t\"};",
            "var user = {\"id\":1,\"auth_token\":\"t\"};",
            "var user = {\"id\":\"x\",\"username\":\"a\",\"auth_token\":\"t\"};",
            "var user = {\"id\":1,\"username\":\"a\",\"auth_token\":7};",
            "var user = {\"id\":1,\"username\":\"a\",\"auth_token\":\"has space\"};",
            "var user = {\"id\":1,\"username\":\"a\",\"auth_token\":\"t\"",
            "var user = null;",
            "var user = ",
            "\"auth_token\":\"eyJ\"",
        ] {
            assert_eq!(found(page), None, "{page}");
        }
        let deep = format!("var user = {}", "[".repeat(100_000));
        assert_eq!(found(&deep), None);
        let many = "var user = {".repeat(10_000);
        assert_eq!(found(&many), None);
    }

    #[test]
    fn bytes_that_are_not_utf8_around_the_object_do_not_matter() {
        let mut page = b"<html>\xff\xfe<script>".to_vec();
        page.extend_from_slice(format!("var user = {USER};").as_bytes());
        page.extend_from_slice(b"\xc3</script>");
        let text = String::from_utf8_lossy(&page);
        assert_eq!(found(&text).map(|(id, _)| id), Some(1234));
    }

    #[test]
    fn a_later_valid_object_still_counts() {
        let page = format!("var user = {{\"id\":1}};\nvar user = {USER};");
        assert_eq!(found(&page).map(|(id, _)| id), Some(1234));
    }
}
