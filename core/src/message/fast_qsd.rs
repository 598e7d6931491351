//! A fast path for the one message that dominates live traffic: a `qsd` quote delta exactly in
//! the compact shape the server sends, `{"m":"qsd","p":["<qs>",{"n":"<key>","s":"ok","v":{…}}]}`
//! with flat values (numbers, strings without escapes, null, booleans).
//!
//! It reads the payload in one forward pass without serde's visitor machinery. Anything else
//! (other key order, whitespace, escapes, nested values, errors) returns `None` and the general
//! serde path parses the payload, so both paths always agree; a property test checks that.
//!
//! The payload is already a `&str`, so every string and number is a slice of it taken at the
//! position of an ASCII delimiter (always a character boundary): nothing is validated twice.
//! Numbers are checked against the JSON grammar while their digits are accumulated. Integers
//! come straight from those digits; so do floats whose digits and power of ten are exact in an
//! `f64` (at most 2^53, and 10^0 to 10^22), where one multiplication or division is correctly
//! rounded. Every other float goes to std's correctly rounded parser, which matches serde_json
//! built with `float_roundtrip`.

use std::borrow::Cow;

#[cfg(test)]
use super::{QuoteData, ServerMessage};
use super::{QuoteValues, Scalar};

/// Parses `payload` if it is a plain `ok` qsd in the server's compact form.
#[cfg(test)]
pub(super) fn parse(payload: &str) -> Option<ServerMessage<'_>> {
    let mut values = QuoteValues::default();
    let (session, symbol) = parse_into(payload, &mut values)?;
    Some(ServerMessage::QuoteData(QuoteData {
        session: Cow::Borrowed(session),
        symbol: Cow::Borrowed(symbol),
        values,
    }))
}

/// Reads `payload` into `values` (which starts out empty) if it is a plain `ok` qsd in the
/// server's compact form, and returns its session and symbol; the caller keeps the values
/// where they are instead of moving a whole message around. On `None`, `values` holds
/// whatever was read before the shape broke off and is to be discarded.
pub(crate) fn parse_into<'a>(
    payload: &'a str,
    values: &mut QuoteValues<'a>,
) -> Option<(&'a str, &'a str)> {
    let mut cursor = Cursor {
        text: payload,
        position: 0,
    };
    cursor.expect(br#"{"m":"qsd","p":["#)?;
    let session = cursor.string()?;
    cursor.expect(br#",{"n":"#)?;
    let symbol = cursor.string()?;
    cursor.expect(br#","s":"ok","v":{"#)?;
    if !cursor.eat(b'}') {
        loop {
            let key = cursor.string()?;
            cursor.expect(b":")?;
            let value = cursor.scalar()?;
            values.set(Cow::Borrowed(key), value);
            if !cursor.eat(b',') {
                cursor.expect(b"}")?;
                break;
            }
        }
    }
    cursor.expect(b"}]}")?;
    if cursor.position != payload.len() {
        return None;
    }
    Some((session, symbol))
}

/// Powers of ten that an `f64` holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Digits that always fit in a `u64`: 10^19 - 1 < 2^64.
const MAX_DIGITS: usize = 19;

/// Every integer up to this one is exact in an `f64`.
const EXACT_INTEGER_LIMIT: u64 = 1 << 53;

struct Cursor<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.position).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        if matched {
            self.position = self.position.saturating_add(1);
        }
        matched
    }

    fn expect(&mut self, literal: &[u8]) -> Option<()> {
        let rest = self.text.as_bytes().get(self.position..)?;
        if !rest.starts_with(literal) {
            return None;
        }
        self.position = self.position.saturating_add(literal.len());
        Some(())
    }

    /// A string without escapes or control characters, returned without its quotes.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b"\"")?;
        let start = self.position;
        let rest = self.text.as_bytes().get(start..)?;
        let length = string_length(rest)?;
        if rest.get(length) != Some(&b'"') {
            return None;
        }
        let end = start.saturating_add(length);
        // Both ends border an ASCII quote, so they are character boundaries.
        let text = self.text.get(start..end)?;
        self.position = end.saturating_add(1);
        Some(text)
    }

    /// A flat JSON value: number, string, `null`, `true` or `false`.
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => self.string().map(|text| Scalar::Text(Cow::Borrowed(text))),
            b'n' => self.expect(b"null").map(|()| Scalar::Null),
            b't' => self
                .expect(b"true")
                .map(|()| Scalar::Other(serde_json::Value::Bool(true))),
            b'f' => self
                .expect(b"false")
                .map(|()| Scalar::Other(serde_json::Value::Bool(false))),
            _ => self.number(),
        }
    }

    /// A number in strict JSON grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<Scalar<'a>> {
        let start = self.position;
        let negative = self.eat(b'-');
        let first_digit = self.peek();
        let (integer_digits, mut mantissa) = self.digits(0);
        if integer_digits == 0 {
            return None;
        }
        if first_digit == Some(b'0') && integer_digits > 1 {
            return None;
        }
        let mut significant_digits = integer_digits;
        let mut is_integer = true;
        // The power of ten that the mantissa is to be multiplied by.
        let mut scale: i64 = 0;
        if self.eat(b'.') {
            is_integer = false;
            let fraction_digits;
            (fraction_digits, mantissa) = self.digits(mantissa);
            if fraction_digits == 0 {
                return None;
            }
            significant_digits = significant_digits.saturating_add(fraction_digits);
            // At most MAX_DIGITS digits matter below; more leave the fast path anyway.
            scale = i64::try_from(fraction_digits.min(MAX_DIGITS))
                .map_or(0, |digits| 0i64.saturating_sub(digits));
        }
        let mut exponent_digits = 0;
        if self.eat(b'e') || self.eat(b'E') {
            is_integer = false;
            let exponent_negative = if self.eat(b'+') {
                false
            } else {
                self.eat(b'-')
            };
            let exponent;
            (exponent_digits, exponent) = self.digits(0);
            if exponent_digits == 0 {
                return None;
            }
            let exponent = i64::try_from(exponent).unwrap_or(i64::MAX);
            scale = if exponent_negative {
                scale.saturating_sub(exponent)
            } else {
                scale.saturating_add(exponent)
            };
        }
        // Up to MAX_DIGITS digits the folded value is exact; past that it wrapped.
        let exact = significant_digits <= MAX_DIGITS && exponent_digits <= MAX_DIGITS;
        if is_integer {
            // Integers as serde_json reports them; past 18 digits let serde_json decide.
            if integer_digits > 18 {
                return None;
            }
            let value = i64::try_from(mantissa).ok()?;
            return Some(match (negative, value) {
                // serde_json reads `-0` as the float -0.0.
                (true, 0) => Scalar::Float(-0.0),
                (true, _) => Scalar::Signed(value.checked_neg()?),
                (false, _) => Scalar::Unsigned(value.unsigned_abs()),
            });
        }
        let value = match exact.then(|| exact_float(mantissa, scale)).flatten() {
            Some(magnitude) if negative => -magnitude,
            Some(magnitude) => magnitude,
            None => self.text.get(start..self.position)?.parse().ok()?,
        };
        value.is_finite().then_some(Scalar::Float(value))
    }

    /// Skips ASCII digits, folding them into `value` (exact for up to [`MAX_DIGITS`] digits in
    /// all, wrapped past that); returns how many there were and the value.
    fn digits(&mut self, mut value: u64) -> (usize, u64) {
        let rest = self
            .text
            .as_bytes()
            .get(self.position..)
            .unwrap_or_default();
        let mut count = rest.len();
        for (index, &byte) in rest.iter().enumerate() {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                count = index;
                break;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        }
        self.position = self.position.saturating_add(count);
        (count, value)
    }
}

/// How many leading bytes of `bytes` are neither `"`, `\` nor a control character; `None` when
/// all of them are. Reads eight bytes at a time.
pub(super) fn string_length(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = 0x2222_2222_2222_2222;
    const BACKSLASHES: u64 = 0x5c5c_5c5c_5c5c_5c5c;
    const SPACES: u64 = 0x2020_2020_2020_2020;
    // The high bit of each byte below `limit` (repeated in every byte, at most 0x80) in `word`.
    // Only the lowest flag is sure (a borrow can flag the bytes above it), and only it is used.
    let below = |word: u64, limit: u64| word.wrapping_sub(limit) & !word & HIGH_BITS;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0usize;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let found =
            below(word ^ QUOTES, ONES) | below(word ^ BACKSLASHES, ONES) | below(word, SPACES);
        if found != 0 {
            // Little-endian: the lowest flagged byte comes first.
            let index = usize::try_from(found.trailing_zeros() >> 3).ok()?;
            return Some(offset.saturating_add(index));
        }
        offset = offset.saturating_add(8);
    }
    let index = chunks
        .remainder()
        .iter()
        .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)?;
    Some(offset.saturating_add(index))
}

/// `mantissa × 10^scale` when both factors are exact in an `f64`, so that the one operation
/// rounds correctly; `None` when std's parser must decide.
fn exact_float(mantissa: u64, scale: i64) -> Option<f64> {
    if mantissa > EXACT_INTEGER_LIMIT {
        return None;
    }
    let power = EXACT_POWERS_OF_TEN.get(usize::try_from(scale.unsigned_abs()).ok()?)?;
    #[allow(clippy::cast_precision_loss)] // at most 2^53: exact
    let mantissa = mantissa as f64;
    Some(if scale < 0 {
        mantissa / power
    } else {
        mantissa * power
    })
}
