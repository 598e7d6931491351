//! Every parser of untrusted HTTP input behind one entry point, for the fuzz target
//! (`fuzz/fuzz_targets/http.rs`). Not an API: hidden from the docs.

/// Runs `data` through every parser of HTTP answers: JWT claims, pasted cookies, `Set-Cookie`
/// and `Retry-After` headers, the home page's user object, search pages and scanner rows. None
/// may panic, hang or allocate without bound.
pub fn every_parser(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::jwt::claims(&text);
    let _ = crate::session::Cookies::parse(&text);
    let _ = crate::cookie::parse_set_cookie(&text);
    let _ = crate::error::parse_retry_after(&text);
    let _ = crate::token::extract_user(&text);
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(page) = crate::search::parse_page(&body) {
            let _ = page.remaining;
            for item in page.items {
                let _ = crate::search::parse_item(item);
            }
        }
        let _ = crate::scanner::rows(&body).count();
    }
}
