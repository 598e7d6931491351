//! Small text helpers for untrusted strings.

/// `text` without control characters, cut to `max_chars` characters and trimmed.
pub(crate) fn clean(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Shortest secret redacted: shorter ones would blank ordinary text.
const MIN_REDACTED: usize = 4;

/// `text` with every occurrence of a secret replaced by `<redacted>`, for text quoted from a
/// response (a proxy page may echo the request's headers).
pub(crate) fn redact(text: &str, secrets: &[crate::Secret]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        let value = secret.expose();
        if value.len() >= MIN_REDACTED && out.contains(value) {
            out = out.replace(value, "<redacted>");
        }
    }
    out
}

/// How many characters of a body an error quotes.
pub(crate) const SNIPPET_CHARS: usize = 80;

/// The first [`SNIPPET_CHARS`] characters of a body, decoded leniently, control characters
/// (newlines included) removed.
pub(crate) fn snippet(body: &[u8], secrets: &[crate::Secret]) -> String {
    // Four bytes per character at most, so this prefix holds enough characters.
    let head = body.get(..SNIPPET_CHARS.saturating_mul(4)).unwrap_or(body);
    clean(
        &redact(&String::from_utf8_lossy(head), secrets),
        SNIPPET_CHARS,
    )
}

/// `text` with every `<em>` and `</em>` (any case) removed, also when removing one forms another.
pub(crate) fn strip_em(text: &str) -> String {
    let mut current = text.to_owned();
    loop {
        let next = remove_ascii_case_insensitive(
            &remove_ascii_case_insensitive(&current, "</em>"),
            "<em>",
        );
        // Each pass that changes anything makes the string shorter, so this ends.
        if next.len() == current.len() {
            return next;
        }
        current = next;
    }
}

/// `text` without the occurrences of `pattern` (lower-case ASCII), compared ignoring ASCII case.
fn remove_ascii_case_insensitive(text: &str, pattern: &str) -> String {
    // ASCII lower-casing keeps every byte where it is, so offsets in `lower` are offsets in `text`.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0usize;
    for (start, _) in lower.match_indices(pattern) {
        if let Some(piece) = text.get(last..start) {
            out.push_str(piece);
        }
        last = start.saturating_add(pattern.len());
    }
    if let Some(piece) = text.get(last..) {
        out.push_str(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_drops_control_characters_and_bounds_the_length() {
        assert_eq!(clean(" a\u{0}b\nc\u{7f} ", 10), "abc");
        assert_eq!(clean("ééééé", 3), "ééé");
    }

    #[test]
    fn snippets_are_short_single_line_and_survive_bad_utf8() {
        let body = b"<html>\r\n<body>\x00\xff\xfe 403 Forbidden</body></html>";
        let text = snippet(body, &[]);
        assert!(text.starts_with("<html><body>"), "{text}");
        assert!(!text.chars().any(char::is_control));
        let long = vec![b'x'; 10_000];
        assert_eq!(snippet(&long, &[]).chars().count(), SNIPPET_CHARS);
        assert_eq!(snippet(b"", &[]), "");
        // Multi-byte characters cut in the middle of the prefix do not panic.
        let wide = "é".repeat(1_000);
        assert_eq!(snippet(wide.as_bytes(), &[]).chars().count(), SNIPPET_CHARS);
    }

    #[test]
    fn secrets_are_redacted_from_quoted_text() {
        let secrets = [crate::Secret::from("SID123"), crate::Secret::from("pw")];
        assert_eq!(
            redact("Cookie: sessionid=SID123; x=SID123", &secrets),
            "Cookie: sessionid=<redacted>; x=<redacted>"
        );
        // Too short to redact without blanking ordinary text.
        assert_eq!(redact("pwned", &secrets), "pwned");
        assert_eq!(
            snippet(b"<html>\nsessionid=SID123</html>", &secrets),
            "<html>sessionid=<redacted></html>"
        );
    }

    #[test]
    fn em_tags_are_stripped_in_any_case_and_when_nested() {
        assert_eq!(strip_em("<em>Apple</em> Inc."), "Apple Inc.");
        assert_eq!(strip_em("<EM>AA</Em>PL"), "AAPL");
        assert_eq!(strip_em("<<em>em>x</<em>em>"), "x");
        assert_eq!(strip_em("Société <em>Générale</em>"), "Société Générale");
        assert_eq!(strip_em("a < b <emph>"), "a < b <emph>");
        assert_eq!(strip_em(""), "");
    }
}
