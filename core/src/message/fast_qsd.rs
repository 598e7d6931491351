//! A fast path for the one message that dominates live traffic: a `qsd` quote delta exactly in
//! the compact shape the server sends, `{"m":"qsd","p":["<qs>",{"n":"<key>","s":"ok","v":{…}}]}`
//! with flat values (numbers, strings without escapes, null, booleans).
//!
//! It reads the payload in one forward pass without serde's visitor machinery. Anything else
//! (other key order, whitespace, escapes, nested values, errors) returns `None` and the general
//! serde path parses the payload, so both paths always agree; a property test checks that.
//! Numbers are validated against the JSON grammar before std's correctly rounded parser runs,
//! which matches serde_json built with `float_roundtrip`.

use std::borrow::Cow;

use super::{QuoteData, QuoteValues, Scalar, ServerMessage};

/// Parses `payload` if it is a plain `ok` qsd in the server's compact form.
pub(super) fn parse(payload: &[u8]) -> Option<ServerMessage<'_>> {
    let mut cursor = Cursor {
        bytes: payload,
        position: 0,
    };
    cursor.expect(br#"{"m":"qsd","p":["#)?;
    let session = cursor.string()?;
    cursor.expect(br#",{"n":"#)?;
    let symbol = cursor.string()?;
    cursor.expect(br#","s":"ok","v":{"#)?;
    let mut values = QuoteValues::default();
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
    Some(ServerMessage::QuoteData(QuoteData {
        session: Cow::Borrowed(session),
        symbol: Cow::Borrowed(symbol),
        values,
    }))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        if matched {
            self.position = self.position.saturating_add(1);
        }
        matched
    }

    fn expect(&mut self, literal: &[u8]) -> Option<()> {
        let rest = self.bytes.get(self.position..)?;
        if !rest.starts_with(literal) {
            return None;
        }
        self.position = self.position.saturating_add(literal.len());
        Some(())
    }

    /// A string without escapes or control characters, returned without its quotes.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b"\"")?;
        let rest = self.bytes.get(self.position..)?;
        let length = rest
            .iter()
            .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)?;
        if rest.get(length) != Some(&b'"') {
            return None;
        }
        let text = std::str::from_utf8(rest.get(..length)?).ok()?;
        self.position = self.position.saturating_add(length).saturating_add(1);
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
        let integer_digits = self.digits();
        if integer_digits == 0 {
            return None;
        }
        let leading_zero =
            self.bytes.get(start.saturating_add(usize::from(negative))) == Some(&b'0');
        if leading_zero && integer_digits > 1 {
            return None;
        }
        let mut is_integer = true;
        if self.eat(b'.') {
            is_integer = false;
            if self.digits() == 0 {
                return None;
            }
        }
        if self.eat(b'e') || self.eat(b'E') {
            is_integer = false;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let text = std::str::from_utf8(self.bytes.get(start..self.position)?).ok()?;
        // Integers as serde_json reports them; past 18 digits let serde_json decide.
        if is_integer && integer_digits <= 18 {
            let value: i64 = text.parse().ok()?;
            return Some(match (negative, value) {
                // serde_json reads `-0` as the float -0.0.
                (true, 0) => Scalar::Float(-0.0),
                (true, _) => Scalar::Signed(value),
                (false, _) => Scalar::Unsigned(value.unsigned_abs()),
            });
        }
        if is_integer {
            return None;
        }
        let value: f64 = text.parse().ok()?;
        value.is_finite().then_some(Scalar::Float(value))
    }

    fn digits(&mut self) -> usize {
        let rest = self.bytes.get(self.position..).unwrap_or_default();
        let count = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
        self.position = self.position.saturating_add(count);
        count
    }
}
