//! Fault injection: what the emulator does wrong, to which connection, and when.
//!
//! A fault spec is `[#N:]ACTION[@AT][/FOR]`:
//! - `#N:` limits it to the N-th accepted TCP connection (1-based; plain HTTP connections to
//!   the same port count too); without it, every connection;
//! - `@AT` is the time after the connection opens (default at once);
//! - `/FOR` is the duration of `stall`, `heartbeats-only` and `delay`, or the pause per write of `slow`.
//!
//! Actions: `drop` (TCP reset, no close frame), `close` (close frame, then TCP close), `drop-mid`
//! (half a WebSocket frame, then reset), `stall` (send nothing, keep the socket),
//! `heartbeats-only`, `garbage`, `bad-length`, `protocol-error` (`protocol_error` "wrong data",
//! then a close frame), `slow`, the auth faults `bad-token` (from AT on, `set_auth_token` is
//! refused with `protocol_error` "bad auth token" and a close, whatever the token) and
//! `expire-token` (at AT the connection's token expires: "bad auth token", a close frame, and
//! every later connection presenting that token is refused; other tokens still work), and at
//! accept time `refuse` (reset before the upgrade, or before any HTTP request), `delay` (accept
//! late) and `http-429` (refuse the upgrade with HTTP 429; HTTP requests on that connection are
//! still served).
//!
//! ```
//! use std::time::Duration;
//! use tickwire_emulator::fault::{Fault, FaultAction};
//!
//! let fault: Fault = "#2:stall@3s/20s".parse().unwrap();
//! assert_eq!(fault.connection, Some(2));
//! assert_eq!(fault.at, Duration::from_secs(3));
//! assert_eq!(fault.action, FaultAction::Stall(Duration::from_secs(20)));
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// TCP reset without a close frame.
    Drop,
    /// A proper close frame, then the TCP close.
    Close,
    /// Half of a WebSocket frame, then a TCP reset.
    DropMidMessage,
    /// Send nothing (not even heartbeats) for this long; the socket stays open.
    Stall(Duration),
    /// Send only heartbeats for this long.
    HeartbeatsOnly(Duration),
    /// One message of bytes that are not packets.
    Garbage,
    /// One packet whose length prefix is wrong.
    BadLength,
    /// `protocol_error` ("wrong data"), then a close frame.
    ProtocolError,
    /// Refuse every `set_auth_token` from now on, whatever the token.
    BadToken,
    /// The connection's current token expires now: `protocol_error` ("bad auth token"), a close
    /// frame, and the token is refused on every connection from then on.
    ExpireToken,
    /// Pause this long before every write.
    Slow(Duration),
    /// Reset the TCP connection before the upgrade.
    Refuse,
    /// Wait this long before answering the upgrade.
    Delay(Duration),
    /// Answer the upgrade with HTTP 429 Too Many Requests.
    Http429,
}

impl FaultAction {
    /// Whether the action applies when the connection is accepted rather than later.
    pub fn at_accept(self) -> bool {
        matches!(
            self,
            FaultAction::Refuse | FaultAction::Delay(_) | FaultAction::Http429
        )
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The connection (1-based accept order) it applies to; `None` = every connection.
    pub connection: Option<u64>,
    /// What happens.
    pub action: FaultAction,
    /// When, after the connection opens.
    pub at: Duration,
}

impl Fault {
    /// Whether this fault applies to connection number `connection`.
    pub fn applies_to(&self, connection: u64) -> bool {
        self.connection.is_none_or(|only| only == connection)
    }
}

/// A fault spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpecError(String);

impl fmt::Display for FaultSpecError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for FaultSpecError {}

fn duration(text: &str, spec: &str) -> Result<Duration, FaultSpecError> {
    tickwire_core::client::parse_duration(text)
        .map_err(|error| FaultSpecError(format!("{spec:?}: {error}")))
}

impl FromStr for Fault {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Fault, FaultSpecError> {
        let mut rest = spec.trim();
        let mut connection = None;
        if let Some(after_hash) = rest.strip_prefix('#') {
            let (number, tail) = after_hash
                .split_once(':')
                .ok_or_else(|| FaultSpecError(format!("{spec:?}: expected #N:ACTION")))?;
            let number: u64 = number
                .parse()
                .map_err(|_| FaultSpecError(format!("{spec:?}: bad connection number")))?;
            if number == 0 {
                return Err(FaultSpecError(format!(
                    "{spec:?}: connections count from 1"
                )));
            }
            connection = Some(number);
            rest = tail;
        }
        let (rest, length) = match rest.split_once('/') {
            Some((head, length)) => (head, Some(duration(length, spec)?)),
            None => (rest, None),
        };
        let (name, at) = match rest.split_once('@') {
            Some((name, at)) => (name, duration(at, spec)?),
            None => (rest, Duration::ZERO),
        };
        let needs = |what: &str| {
            length.ok_or_else(|| {
                FaultSpecError(format!("{spec:?}: {name} needs /{what}, e.g. {name}/10s"))
            })
        };
        let action = match name {
            "drop" | "reset" => FaultAction::Drop,
            "close" => FaultAction::Close,
            "drop-mid" => FaultAction::DropMidMessage,
            "stall" => FaultAction::Stall(needs("DURATION")?),
            "heartbeats-only" => FaultAction::HeartbeatsOnly(needs("DURATION")?),
            "garbage" => FaultAction::Garbage,
            "bad-length" => FaultAction::BadLength,
            "protocol-error" => FaultAction::ProtocolError,
            "bad-token" => FaultAction::BadToken,
            "expire-token" => FaultAction::ExpireToken,
            "slow" => FaultAction::Slow(needs("PAUSE")?),
            "refuse" => FaultAction::Refuse,
            "delay" => FaultAction::Delay(needs("DURATION")?),
            "http-429" | "429" => FaultAction::Http429,
            other => {
                return Err(FaultSpecError(format!(
                    "{spec:?}: unknown fault {other:?} (drop, close, drop-mid, stall, heartbeats-only, garbage, \
                     bad-length, protocol-error, slow, bad-token, expire-token, refuse, delay, http-429)"
                )));
            }
        };
        Ok(Fault {
            connection,
            action,
            at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let parse = |spec: &str| spec.parse::<Fault>();
        assert_eq!(
            parse("drop@5s"),
            Ok(Fault {
                connection: None,
                action: FaultAction::Drop,
                at: Duration::from_secs(5)
            })
        );
        assert_eq!(parse("#3:refuse").unwrap().connection, Some(3));
        assert_eq!(
            parse("heartbeats-only@1s/30s").unwrap().action,
            FaultAction::HeartbeatsOnly(Duration::from_secs(30))
        );
        assert_eq!(
            parse("slow/5ms").unwrap().action,
            FaultAction::Slow(Duration::from_millis(5))
        );
        assert_eq!(parse("#1:http-429").unwrap().action, FaultAction::Http429);
        assert!(parse("#1:delay/2s").unwrap().action.at_accept());
        assert_eq!(
            parse("#1:bad-token"),
            Ok(Fault {
                connection: Some(1),
                action: FaultAction::BadToken,
                at: Duration::ZERO
            })
        );
        let expire = parse("expire-token@30s").unwrap();
        assert_eq!(
            (expire.action, expire.at),
            (FaultAction::ExpireToken, Duration::from_secs(30))
        );
        assert!(!expire.action.at_accept());
    }

    #[test]
    fn bad_specs_say_why() {
        assert!(
            ("explode".parse::<Fault>())
                .unwrap_err()
                .to_string()
                .contains("unknown fault")
        );
        assert!(
            ("stall@1s".parse::<Fault>())
                .unwrap_err()
                .to_string()
                .contains("needs /DURATION")
        );
        assert!(
            ("#0:drop".parse::<Fault>())
                .unwrap_err()
                .to_string()
                .contains("count from 1")
        );
        assert!(
            ("#x:drop".parse::<Fault>())
                .unwrap_err()
                .to_string()
                .contains("bad connection number")
        );
        assert!(("drop@soon".parse::<Fault>()).is_err());
    }
}
