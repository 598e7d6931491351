//! Compact, ASCII-only JSON output.
//!
//! Everything tickwire sends is compact JSON (no spaces, as the real clients and server use)
//! with every non-ASCII character escaped as `\uXXXX`. The payload is then pure ASCII, so its
//! byte count, character count and UTF-16 count agree and no peer can disagree on the length
//! prefix.
//!
//! ```
//! let text = tickwire_core::json::to_ascii_string(&("café", 1)).unwrap();
//! assert_eq!(text, r#"["caf\u00e9",1]"#);
//! ```

use std::io;

use serde::Serialize;

/// serde_json formatter: compact, with non-ASCII escaped as `\uXXXX` (surrogate pairs above
/// the Basic Multilingual Plane).
#[derive(Debug, Clone, Copy, Default)]
pub struct AsciiFormatter;

impl serde_json::ser::Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        let mut run_start = 0;
        for (offset, character) in fragment.char_indices() {
            if character.is_ascii() {
                continue;
            }
            writer.write_all(
                fragment
                    .as_bytes()
                    .get(run_start..offset)
                    .unwrap_or_default(),
            )?;
            for unit in character.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            run_start = offset.saturating_add(character.len_utf8());
        }
        writer.write_all(fragment.as_bytes().get(run_start..).unwrap_or_default())
    }
}

/// Appends `value` as compact ASCII-only JSON to `out`.
pub fn write_ascii<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(out, AsciiFormatter);
    value.serialize(&mut serializer)
}

/// `value` as compact ASCII-only JSON.
pub fn to_ascii_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(64);
    write_ascii(value, &mut out)?;
    // The formatter writes ASCII only, apart from what serde_json itself writes, which is UTF-8.
    String::from_utf8(out).map_err(serde::ser::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_non_ascii_and_keeps_json_escapes() {
        let original = "a\"é😀\n\u{7f}b";
        let text = to_ascii_string(&serde_json::json!({ "k": original })).unwrap();
        // DEL (0x7f) is ASCII and needs no escape in JSON.
        assert_eq!(text, "{\"k\":\"a\\\"\\u00e9\\ud83d\\ude00\\n\u{7f}b\"}");
        assert!(text.is_ascii());
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["k"], original);
    }

    #[test]
    fn is_compact() {
        assert_eq!(
            to_ascii_string(&serde_json::json!({"m":"x","p":[1,"y"]})).unwrap(),
            r#"{"m":"x","p":[1,"y"]}"#
        );
    }
}
