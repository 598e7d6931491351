//! Packet framing: `~m~<len>~m~<payload>` packets inside one WebSocket text message.
//!
//! One WebSocket message may hold many packets back to back. [`Decoder::decode`] walks a
//! message and yields every packet in order, as zero-copy [`Bytes`] slices of the input.
//!
//! # Length unit
//!
//! `<len>` counts UTF-16 code units, which is what the real server and its web client count.
//! For ASCII payloads (every payload seen in real captures) that equals the byte count, so
//! the fast path checks `is_ascii` on the counted span and never decodes characters. A span
//! with non-ASCII bytes is walked character by character. When the counted span does not end
//! exactly at the next `~m~<digits>~m~` header or at the end of the message, the decoder
//! resynchronises on the next header instead: this tolerates peers that count bytes or
//! characters. Each such event is counted ([`Packets::resyncs`]).
//!
//! # Hostile input
//!
//! Any bytes at all may be fed in. Each problem becomes a [`FrameError`] for that packet (or
//! the whole message), decoding continues at the next header, and nothing is allocated in
//! proportion to a length prefix.
//!
//! ```
//! use bytes::Bytes;
//! use tickwire_core::codec::{Decoder, Packet};
//!
//! let message = Bytes::from_static(b"~m~4~m~~h~7~m~10~m~{\"m\":\"du\"}");
//! let packets: Vec<_> = Decoder::new().decode(&message).collect();
//! assert!(matches!(&packets[0], Ok(Packet::Heartbeat(h)) if h.number() == Some(7)));
//! assert!(matches!(&packets[1], Ok(Packet::Json(p)) if &p[..] == b"{\"m\":\"du\"}"));
//! ```

use std::fmt::Write as _;

use bytes::Bytes;
use memchr::memmem;

/// The largest packet accepted by default: 32 MiB of payload.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 32 * 1024 * 1024;

const MARK: &[u8] = b"~m~";
const HEARTBEAT_MARK: &[u8] = b"~h~";
const LEGACY_JSON_MARK: &[u8] = b"~j~";
/// A length prefix longer than this many digits cannot fit any packet size we accept.
const MAX_LENGTH_DIGITS: usize = 20;

/// One decoded packet. Payloads are slices of the decoded message, valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A JSON payload: a `{"m":…,"p":[…]}` message or the server hello.
    Json(Bytes),
    /// A heartbeat `~h~<n>`. Echo it back unchanged with [`Heartbeat::echo`].
    Heartbeat(Heartbeat),
    /// A legacy socket.io-style `~j~<json>` payload; holds the JSON after the marker.
    LegacyJson(Bytes),
}

impl Packet {
    fn classify(payload: Bytes) -> Packet {
        if payload.starts_with(HEARTBEAT_MARK) {
            Packet::Heartbeat(Heartbeat { payload })
        } else if payload.starts_with(LEGACY_JSON_MARK) {
            Packet::LegacyJson(payload.slice(LEGACY_JSON_MARK.len()..))
        } else {
            Packet::Json(payload)
        }
    }
}

/// A server heartbeat, kept whole (`~h~12`) so that the echo is byte-identical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    payload: Bytes,
}

impl Heartbeat {
    /// The whole heartbeat payload, marker included, e.g. `~h~12`.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The heartbeat counter, when it is a plain decimal number that fits in a `u64`.
    pub fn number(&self) -> Option<u64> {
        let digits = self.payload.get(HEARTBEAT_MARK.len()..)?;
        parse_decimal(digits)
    }

    /// The packet to send back: the identical payload, framed.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use tickwire_core::codec::{Decoder, Packet};
    /// let message = Bytes::from_static(b"~m~5~m~~h~12");
    /// let Some(Ok(Packet::Heartbeat(h))) = Decoder::new().decode(&message).next() else { panic!() };
    /// assert_eq!(h.echo(), "~m~5~m~~h~12");
    /// ```
    pub fn echo(&self) -> String {
        // Payloads handed out by the decoder are valid UTF-8; a lossy view never changes them.
        frame(&String::from_utf8_lossy(&self.payload))
    }
}

/// Why a packet (or a whole message) could not be decoded. Decoding goes on after each one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message had no bytes at all.
    #[error("empty message")]
    EmptyMessage,
    /// Bytes where a `~m~` header should start.
    #[error("expected a `~m~` packet header at byte {offset}")]
    MissingHeader {
        /// Byte offset in the message.
        offset: usize,
    },
    /// A header cut off before its closing `~m~`.
    #[error("truncated packet header at byte {offset}")]
    TruncatedHeader {
        /// Byte offset of the header in the message.
        offset: usize,
    },
    /// The length prefix is empty, not decimal, or absurdly long.
    #[error("length prefix at byte {offset} is not a decimal number")]
    BadLength {
        /// Byte offset of the header in the message.
        offset: usize,
    },
    /// The length prefix exceeds the configured maximum packet size.
    #[error("packet length {length} at byte {offset} exceeds the maximum of {max}")]
    TooLarge {
        /// Byte offset of the header in the message.
        offset: usize,
        /// The announced length.
        length: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The length prefix announces more than the message still holds.
    #[error(
        "packet length {length} at byte {offset} runs past the end of the message ({remaining} bytes remain)"
    )]
    Truncated {
        /// Byte offset of the header in the message.
        offset: usize,
        /// The announced length.
        length: u64,
        /// Bytes left after the header.
        remaining: usize,
    },
    /// The payload is not valid UTF-8.
    #[error("payload at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Byte offset of the payload in the message.
        offset: usize,
    },
}

/// Splits WebSocket messages into packets.
///
/// Cheap to create; holds only its limit and a prepared header searcher.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet_size: usize,
    header_finder: memmem::Finder<'static>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default maximum packet size ([`DEFAULT_MAX_PACKET_SIZE`]).
    pub fn new() -> Self {
        Self::with_max_packet_size(DEFAULT_MAX_PACKET_SIZE)
    }

    /// A decoder that rejects packets announcing more than `max_packet_size` units.
    pub fn with_max_packet_size(max_packet_size: usize) -> Self {
        Decoder {
            max_packet_size,
            header_finder: memmem::Finder::new(MARK),
        }
    }

    /// The configured maximum packet size.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Iterates over the packets of one WebSocket message, in order.
    pub fn decode<'d>(&'d self, message: &Bytes) -> Packets<'d> {
        Packets {
            decoder: self,
            message: message.clone(),
            position: 0,
            resyncs: 0,
            started: false,
        }
    }
}

/// Iterator over the packets of one message; see [`Decoder::decode`].
#[derive(Debug)]
pub struct Packets<'d> {
    decoder: &'d Decoder,
    message: Bytes,
    position: usize,
    resyncs: u32,
    started: bool,
}

impl Packets<'_> {
    /// How many packets so far had a length prefix that did not match (and were recovered by
    /// resynchronising on the next header).
    pub fn resyncs(&self) -> u32 {
        self.resyncs
    }

    /// Where the next header at or after `from` starts, or the end of the message.
    fn next_header_or_end(&self, from: usize) -> usize {
        let mut search_from = from;
        while let Some(rest) = self.message.get(search_from..) {
            match self.decoder.header_finder.find(rest) {
                Some(found) => {
                    let at = search_from.saturating_add(found);
                    if is_header_at(&self.message, at) {
                        return at;
                    }
                    search_from = at.saturating_add(1);
                }
                None => break,
            }
        }
        self.message.len()
    }

    /// Skips to the next header after a broken one, returning the error to report.
    fn fail(
        &mut self,
        resume_from: usize,
        error: FrameError,
    ) -> Option<Result<Packet, FrameError>> {
        self.position = self.next_header_or_end(resume_from);
        Some(Err(error))
    }

    /// Returns the payload `start..end`, after checking it is UTF-8 when it had to be.
    fn emit(
        &mut self,
        start: usize,
        end: usize,
        checked: bool,
    ) -> Option<Result<Packet, FrameError>> {
        self.position = end;
        let length = end.saturating_sub(start);
        if !checked && length > self.decoder.max_packet_size {
            // A resynchronised span is bounded by the message, not by a prefix: check it too.
            let max = self.decoder.max_packet_size;
            return Some(Err(FrameError::TooLarge {
                offset: start,
                length: length as u64,
                max,
            }));
        }
        let payload = self.message.slice(start..end);
        if !checked && std::str::from_utf8(&payload).is_err() {
            return Some(Err(FrameError::InvalidUtf8 { offset: start }));
        }
        Some(Ok(Packet::classify(payload)))
    }
}

impl Iterator for Packets<'_> {
    type Item = Result<Packet, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            if self.message.is_empty() {
                return Some(Err(FrameError::EmptyMessage));
            }
        }
        let header_at = self.position;
        let rest = self.message.get(header_at..)?;
        if rest.is_empty() {
            return None;
        }
        if !rest.starts_with(MARK) {
            if MARK.starts_with(rest) {
                return self.fail(
                    self.message.len(),
                    FrameError::TruncatedHeader { offset: header_at },
                );
            }
            return self.fail(header_at, FrameError::MissingHeader { offset: header_at });
        }
        let after_mark = header_at.saturating_add(MARK.len());
        let Some(header) = parse_header(&self.message, after_mark) else {
            return self.fail(
                after_mark,
                FrameError::TruncatedHeader { offset: header_at },
            );
        };
        let length = match header.length {
            HeaderLength::Bad => {
                return self.fail(after_mark, FrameError::BadLength { offset: header_at });
            }
            HeaderLength::Value(length) => length,
        };
        let start = header.payload_start;
        let remaining = self.message.len().saturating_sub(start);
        let max = self.decoder.max_packet_size;
        let too_large = usize::try_from(length).map_or(true, |length| length > max);
        if too_large {
            return self.fail(
                start,
                FrameError::TooLarge {
                    offset: header_at,
                    length,
                    max,
                },
            );
        }
        // UTF-16 units never outnumber UTF-8 bytes, so more units than bytes left cannot fit.
        let Some(units) = usize::try_from(length)
            .ok()
            .filter(|&units| units <= remaining)
        else {
            return self.fail(
                start,
                FrameError::Truncated {
                    offset: header_at,
                    length,
                    remaining,
                },
            );
        };
        let utf16_end = utf16_span_end(self.message.get(start..).unwrap_or_default(), units)
            .map(|span| start.saturating_add(span));
        // What a byte-counting peer meant; differs from the UTF-16 span only for non-ASCII.
        let byte_end = start.saturating_add(units);
        let ends_cleanly =
            |end: usize| end == self.message.len() || is_header_at(&self.message, end);
        if let Some(end) = utf16_end {
            if ends_cleanly(end) {
                return self.emit(start, end, true);
            }
            // A header cut off by the end of the message is a weaker sign of a packet end: take
            // it only when no complete header comes first.
            if is_truncated_header_at_end(&self.message, end)
                && self.next_header_or_end(start) >= end
            {
                return self.emit(start, end, true);
            }
        }
        // The count does not fit as UTF-16. A byte-counting peer's span lands on a header even
        // when its payload holds header-like text; otherwise take the next header.
        if utf16_end != Some(byte_end) && ends_cleanly(byte_end) {
            self.resyncs = self.resyncs.saturating_add(1);
            return self.emit(start, byte_end, false);
        }
        self.resyncs = self.resyncs.saturating_add(1);
        let end = self.next_header_or_end(start);
        self.emit(start, end, false)
    }
}

enum HeaderLength {
    Value(u64),
    Bad,
}

struct Header {
    length: HeaderLength,
    payload_start: usize,
}

/// Parses `<digits>~m~` starting at `at`; `None` when the closing mark is missing.
fn parse_header(message: &[u8], at: usize) -> Option<Header> {
    let window_end = at.saturating_add(MAX_LENGTH_DIGITS + 2).min(message.len());
    let window = message.get(at..window_end)?;
    let Some(tilde) = memchr::memchr(b'~', window) else {
        // No `~` within reach: either the header was cut off, or the "digits" go on forever.
        if window_end == message.len() {
            return None;
        }
        return Some(Header {
            length: HeaderLength::Bad,
            payload_start: at,
        });
    };
    let digits_end = at.saturating_add(tilde);
    if !message.get(digits_end..)?.starts_with(MARK) {
        if message.len().saturating_sub(digits_end) < MARK.len() {
            return None;
        }
        return Some(Header {
            length: HeaderLength::Bad,
            payload_start: at,
        });
    }
    let digits = message.get(at..digits_end)?;
    let length = match parse_decimal(digits) {
        Some(length) => HeaderLength::Value(length),
        None => HeaderLength::Bad,
    };
    Some(Header {
        length,
        payload_start: digits_end.saturating_add(MARK.len()),
    })
}

/// Whether a header that the end of the message cuts off starts at `at` (`~m`, `~m~12`, `~m~1~`).
fn is_truncated_header_at_end(message: &[u8], at: usize) -> bool {
    let Some(rest) = message.get(at..) else {
        return false;
    };
    if rest.is_empty() {
        return false;
    }
    if rest.len() <= MARK.len() {
        return MARK.starts_with(rest);
    }
    let after = rest.get(MARK.len()..).unwrap_or_default();
    let digit_count = after.iter().take_while(|b| b.is_ascii_digit()).count();
    rest.starts_with(MARK)
        && digit_count <= MAX_LENGTH_DIGITS
        && MARK.starts_with(after.get(digit_count..).unwrap_or_default())
}

/// Whether a complete `~m~<digits>~m~` header starts at `at`.
fn is_header_at(message: &[u8], at: usize) -> bool {
    let Some(rest) = message.get(at..) else {
        return false;
    };
    if !rest.starts_with(MARK) {
        return false;
    }
    let after = rest.get(MARK.len()..).unwrap_or_default();
    let digit_count = after
        .iter()
        .take(MAX_LENGTH_DIGITS + 1)
        .take_while(|b| b.is_ascii_digit())
        .count();
    (1..=MAX_LENGTH_DIGITS).contains(&digit_count)
        && after
            .get(digit_count..)
            .is_some_and(|tail| tail.starts_with(MARK))
}

/// A non-empty run of ASCII digits as a number, `None` if not digits or overflowing.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > MAX_LENGTH_DIGITS {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &digit| {
        let digit = u64::from(digit.checked_sub(b'0').filter(|d| *d <= 9)?);
        value.checked_mul(10)?.checked_add(digit)
    })
}

/// The byte length of the first `units` UTF-16 code units of `bytes`, or `None` when they do
/// not form a whole prefix of valid UTF-8 (too few characters, invalid bytes, or a count that
/// ends inside a surrogate pair).
fn utf16_span_end(bytes: &[u8], units: usize) -> Option<usize> {
    let ascii_span = bytes.get(..units)?;
    if ascii_span.is_ascii() {
        return Some(units);
    }
    // Each UTF-16 unit takes at most 3 UTF-8 bytes; 3 more cover a character cut at the edge.
    let window_len = units.saturating_mul(3).saturating_add(3).min(bytes.len());
    let window = bytes.get(..window_len)?;
    let text = match std::str::from_utf8(window) {
        Ok(text) => text,
        Err(error) => std::str::from_utf8(window.get(..error.valid_up_to())?).ok()?,
    };
    let mut counted = 0usize;
    for (offset, character) in text.char_indices() {
        if counted == units {
            return Some(offset);
        }
        counted = counted.saturating_add(character.len_utf16());
        if counted > units {
            return None;
        }
    }
    (counted == units).then_some(text.len())
}

/// The number of UTF-16 code units in `text`: its byte length when it is ASCII.
pub fn utf16_len(text: &str) -> usize {
    if text.is_ascii() {
        text.len()
    } else {
        text.encode_utf16().count()
    }
}

/// Appends one framed packet `~m~<len>~m~<payload>` to `out`, `<len>` in UTF-16 code units.
pub fn encode_into(payload: &str, out: &mut String) {
    out.reserve(payload.len().saturating_add(16));
    out.push_str("~m~");
    // Writing into a String cannot fail.
    let _ = write!(out, "{}", utf16_len(payload));
    out.push_str("~m~");
    out.push_str(payload);
}

/// One framed packet `~m~<len>~m~<payload>` as a new string.
///
/// ```
/// assert_eq!(tickwire_core::codec::frame("~h~1"), "~m~4~m~~h~1");
/// // A 4-byte emoji is two UTF-16 code units.
/// assert_eq!(tickwire_core::codec::frame("😀"), "~m~2~m~😀");
/// ```
pub fn frame(payload: &str) -> String {
    let mut out = String::new();
    encode_into(payload, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &str) -> (Vec<Result<Packet, FrameError>>, u32) {
        decode_bytes(input.as_bytes())
    }

    fn decode_bytes(input: &[u8]) -> (Vec<Result<Packet, FrameError>>, u32) {
        let decoder = Decoder::new();
        let message = Bytes::copy_from_slice(input);
        let mut packets = decoder.decode(&message);
        let out: Vec<_> = packets.by_ref().collect();
        (out, packets.resyncs())
    }

    fn json(payload: &str) -> Result<Packet, FrameError> {
        Ok(Packet::Json(Bytes::copy_from_slice(payload.as_bytes())))
    }

    fn heartbeat(payload: &str) -> Result<Packet, FrameError> {
        Ok(Packet::Heartbeat(Heartbeat {
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }))
    }

    #[test]
    fn single_json_packet() {
        assert_eq!(decode("~m~7~m~{\"a\":1}"), (vec![json("{\"a\":1}")], 0));
    }

    #[test]
    fn batch_with_heartbeat_in_the_middle() {
        let input = "~m~2~m~{}~m~5~m~~h~12~m~7~m~{\"b\":2}";
        assert_eq!(
            decode(input),
            (vec![json("{}"), heartbeat("~h~12"), json("{\"b\":2}")], 0)
        );
    }

    #[test]
    fn heartbeat_number_and_echo() {
        let (packets, _) = decode("~m~5~m~~h~42");
        let Some(Ok(Packet::Heartbeat(beat))) = packets.first() else {
            panic!("{packets:?}")
        };
        assert_eq!(beat.number(), Some(42));
        assert_eq!(beat.echo(), "~m~5~m~~h~42");
        let (packets, _) = decode("~m~5~m~~h~xy");
        let Some(Ok(Packet::Heartbeat(beat))) = packets.first() else {
            panic!("{packets:?}")
        };
        assert_eq!(beat.number(), None);
        assert_eq!(beat.echo(), "~m~5~m~~h~xy");
    }

    #[test]
    fn legacy_json_payload_is_stripped_of_its_marker() {
        let (packets, _) = decode("~m~10~m~~j~{\"x\":1}");
        assert_eq!(
            packets,
            vec![Ok(Packet::LegacyJson(Bytes::from_static(b"{\"x\":1}")))]
        );
    }

    #[test]
    fn utf16_length_counts_emoji_as_two_units() {
        // "é" is 1 unit (2 bytes), "😀" is 2 units (4 bytes): 7 units in 10 bytes.
        let payload = "{\"é😀\"}";
        assert_eq!(utf16_len(payload), 7);
        let input = format!("~m~7~m~{payload}~m~2~m~{{}}");
        assert_eq!(decode(&input), (vec![json(payload), json("{}")], 0));
    }

    #[test]
    fn byte_counted_length_is_recovered_by_resync() {
        // A peer that counts bytes: 10 bytes, but 7 UTF-16 units.
        let payload = "{\"é😀\"}";
        let input = format!("~m~10~m~{payload}~m~2~m~{{}}");
        assert_eq!(decode(&input), (vec![json(payload), json("{}")], 1));
        // The same as the last packet of the message.
        let input = format!("~m~2~m~{{}}~m~10~m~{payload}");
        assert_eq!(decode(&input), (vec![json("{}"), json(payload)], 1));
    }

    #[test]
    fn char_counted_length_is_recovered_by_resync() {
        // A peer that counts chars: 6 chars, 7 UTF-16 units.
        let payload = "{\"é😀\"}";
        let input = format!("~m~6~m~{payload}~m~2~m~{{}}");
        assert_eq!(decode(&input), (vec![json(payload), json("{}")], 1));
    }

    #[test]
    fn count_ending_inside_a_surrogate_pair_resyncs() {
        let input = "~m~1~m~😀~m~2~m~{}";
        assert_eq!(decode(input), (vec![json("😀"), json("{}")], 1));
    }

    #[test]
    fn wrong_ascii_length_resyncs_on_the_next_header() {
        assert_eq!(
            decode("~m~3~m~hello~m~2~m~{}"),
            (vec![json("hello"), json("{}")], 1)
        );
        assert_eq!(
            decode("~m~9~m~hello~m~2~m~{}"),
            (vec![json("hello"), json("{}")], 1)
        );
    }

    #[test]
    fn header_like_text_inside_a_correctly_counted_payload_is_kept() {
        let payload = "{\"t\":\"~m~3~m~abc\"}";
        let input = format!("~m~{}~m~{payload}~m~2~m~{{}}", payload.len());
        assert_eq!(decode(&input), (vec![json(payload), json("{}")], 0));
    }

    #[test]
    fn empty_message_is_an_error() {
        assert_eq!(decode(""), (vec![Err(FrameError::EmptyMessage)], 0));
    }

    #[test]
    fn missing_header_skips_to_the_next_one() {
        assert_eq!(
            decode("garbage~m~2~m~{}"),
            (
                vec![Err(FrameError::MissingHeader { offset: 0 }), json("{}")],
                0
            )
        );
        assert_eq!(
            decode("no header at all"),
            (vec![Err(FrameError::MissingHeader { offset: 0 })], 0)
        );
    }

    #[test]
    fn non_numeric_and_empty_prefixes_are_bad_lengths() {
        assert_eq!(
            decode("~m~ab~m~{}~m~2~m~{}"),
            (
                vec![Err(FrameError::BadLength { offset: 0 }), json("{}")],
                0
            )
        );
        assert_eq!(
            decode("~m~~m~{}"),
            (vec![Err(FrameError::BadLength { offset: 0 })], 0)
        );
        assert_eq!(
            decode("~m~-1~m~{}"),
            (vec![Err(FrameError::BadLength { offset: 0 })], 0)
        );
        let long_digits = format!("~m~{}~m~{{}}", "9".repeat(40));
        assert_eq!(
            decode(&long_digits),
            (vec![Err(FrameError::BadLength { offset: 0 })], 0)
        );
    }

    #[test]
    fn truncated_headers_are_errors() {
        for input in ["~m~", "~m~12", "~m~12~", "~m~12~m", "~m", "~"] {
            assert_eq!(
                decode(input),
                (vec![Err(FrameError::TruncatedHeader { offset: 0 })], 0),
                "{input}"
            );
        }
        assert_eq!(
            decode("~m~2~m~{}~m~5"),
            (
                vec![json("{}"), Err(FrameError::TruncatedHeader { offset: 9 })],
                0
            )
        );
    }

    #[test]
    fn prefix_larger_than_the_maximum_is_rejected_without_allocating() {
        let decoder = Decoder::with_max_packet_size(8);
        let message = Bytes::from_static(b"~m~9~m~123456789~m~2~m~{}");
        let packets: Vec<_> = decoder.decode(&message).collect();
        assert_eq!(
            packets,
            vec![
                Err(FrameError::TooLarge {
                    offset: 0,
                    length: 9,
                    max: 8
                }),
                json("{}")
            ]
        );
        let (packets, _) = decode("~m~18446744073709551615~m~{}");
        assert!(
            matches!(packets.as_slice(), [Err(FrameError::TooLarge { .. })]),
            "{packets:?}"
        );
    }

    #[test]
    fn prefix_larger_than_what_remains_is_truncated() {
        assert_eq!(
            decode("~m~2~m~{}~m~50~m~{\"a\":1}"),
            (
                vec![
                    json("{}"),
                    Err(FrameError::Truncated {
                        offset: 9,
                        length: 50,
                        remaining: 7
                    })
                ],
                0
            )
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_for_that_packet_only() {
        let mut input = b"~m~4~m~".to_vec();
        input.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
        input.extend_from_slice(b"~m~2~m~{}");
        let (packets, resyncs) = decode_bytes(&input);
        assert_eq!(
            packets,
            vec![Err(FrameError::InvalidUtf8 { offset: 7 }), json("{}")]
        );
        assert_eq!(resyncs, 1);
    }

    #[test]
    fn resynchronised_span_larger_than_the_maximum_is_rejected() {
        let decoder = Decoder::with_max_packet_size(8);
        let message = Bytes::from_static(b"~m~2~m~123456789~m~2~m~{}");
        let packets: Vec<_> = decoder.decode(&message).collect();
        assert_eq!(
            packets,
            vec![
                Err(FrameError::TooLarge {
                    offset: 7,
                    length: 9,
                    max: 8
                }),
                json("{}")
            ]
        );
    }

    #[test]
    fn zero_length_packet_is_an_empty_payload() {
        assert_eq!(decode("~m~0~m~~m~2~m~{}"), (vec![json(""), json("{}")], 0));
    }

    #[test]
    fn frame_counts_utf16_units() {
        assert_eq!(frame("{}"), "~m~2~m~{}");
        assert_eq!(frame("é"), "~m~1~m~é");
        assert_eq!(frame("😀"), "~m~2~m~😀");
        let mut out = String::new();
        encode_into("~h~1", &mut out);
        encode_into("{}", &mut out);
        assert_eq!(out, "~m~4~m~~h~1~m~2~m~{}");
    }

    #[test]
    fn payloads_share_the_input_buffer() {
        let message = Bytes::from(b"~m~2~m~{}".to_vec());
        let Some(Ok(Packet::Json(payload))) = Decoder::new().decode(&message).next() else {
            panic!()
        };
        let base = message.as_ptr() as usize;
        assert_eq!(payload.as_ptr() as usize, base + 7);
    }

    fn raw_payload(packet: &Packet) -> Vec<u8> {
        match packet {
            Packet::Json(payload) => payload.to_vec(),
            Packet::Heartbeat(beat) => beat.payload().to_vec(),
            Packet::LegacyJson(json) => [LEGACY_JSON_MARK, json].concat(),
        }
    }

    fn decode_payloads(message: &str) -> (Vec<Vec<u8>>, usize, u32) {
        let (packets, resyncs) = decode(message);
        let errors = packets.iter().filter(|packet| packet.is_err()).count();
        let payloads = packets
            .iter()
            .filter_map(|packet| packet.as_ref().ok())
            .map(raw_payload)
            .collect();
        (payloads, errors, resyncs)
    }

    fn payload_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => any::<String>(),
            2 => "[ -~]{0,40}",
            1 => "(~m~[0-9]{0,3}(~m~)?|~h~[0-9]{1,3}|~j~|[{}\"a-z:,é😀])*",
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(payloads in proptest::collection::vec(payload_strategy(), 1..8)) {
            let mut message = String::new();
            for payload in &payloads {
                encode_into(payload, &mut message);
            }
            let expected: Vec<Vec<u8>> = payloads.iter().map(|payload| payload.as_bytes().to_vec()).collect();
            prop_assert_eq!(decode_payloads(&message), (expected, 0, 0));
        }

        #[test]
        fn any_split_of_a_batch_decodes_to_the_same_packets(
            payloads in proptest::collection::vec(payload_strategy(), 1..10),
            cuts in proptest::collection::vec(any::<bool>(), 10),
        ) {
            let frames: Vec<String> = payloads.iter().map(|payload| frame(payload)).collect();
            let mut messages = vec![String::new()];
            for (index, framed) in frames.iter().enumerate() {
                if index > 0 && cuts[index] {
                    messages.push(String::new());
                }
                messages.last_mut().unwrap().push_str(framed);
            }
            let decoded: Vec<Vec<u8>> = messages.iter().flat_map(|message| decode_payloads(message).0).collect();
            let expected: Vec<Vec<u8>> = payloads.iter().map(|payload| payload.as_bytes().to_vec()).collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn byte_and_char_counting_peers_are_recovered(
            payloads in proptest::collection::vec("[^~]{0,30}", 1..6),
            count_chars in any::<bool>(),
        ) {
            let mut message = String::new();
            let mut spans = Vec::new();
            for payload in &payloads {
                let length = if count_chars { payload.chars().count() } else { payload.len() };
                message.push_str(&format!("~m~{length}~m~"));
                spans.push((message.len(), length));
                message.push_str(payload);
            }
            // Skip the rare batches where reading a count as UTF-16 also happens to end exactly at
            // a header or at the end: there the UTF-16 reading is the protocol's and wins.
            let header = |at: usize| {
                let rest = &message[at..];
                let digits = rest.get(3..).map_or(0, |tail| tail.bytes().take_while(u8::is_ascii_digit).count());
                rest.starts_with("~m~") && digits > 0 && rest[3 + digits..].starts_with("~m~")
            };
            let misleading = spans.iter().any(|&(start, units)| {
                let mut counted = 0;
                for (offset, character) in message[start..].char_indices() {
                    if counted == units {
                        return start + offset != message.len() && offset != message[start..].len()
                            && header(start + offset) && message[start..start + offset].len() != units;
                    }
                    counted += character.len_utf16();
                }
                counted == units && message[start..].len() != units
            });
            prop_assume!(!misleading);
            let (decoded, errors, _) = decode_payloads(&message);
            let expected: Vec<Vec<u8>> = payloads.iter().map(|payload| payload.as_bytes().to_vec()).collect();
            prop_assert_eq!((decoded, errors), (expected, 0));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_always_progress(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (packets, _) = decode_bytes(&bytes);
            prop_assert!(packets.len() <= bytes.len() + 1);
            for packet in packets.iter().filter_map(|packet| packet.as_ref().ok()) {
                prop_assert!(std::str::from_utf8(&raw_payload(packet)).is_ok());
            }
        }

        #[test]
        fn mutated_batches_never_panic(
            payloads in proptest::collection::vec(payload_strategy(), 1..6),
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            truncate in any::<bool>(),
        ) {
            let mut message = Vec::new();
            for payload in &payloads {
                message.extend_from_slice(frame(payload).as_bytes());
            }
            let at = position.index(message.len());
            if truncate { message.truncate(at) } else { message[at] = byte }
            let (packets, _) = decode_bytes(&message);
            prop_assert!(packets.len() <= message.len() + 1);
        }
    }
}
