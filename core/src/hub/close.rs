//! Why a downstream connection ends, and the WebSocket close code each ending is sent with:
//! the one list of codes the relay uses, so a server and its clients agree on them.

/// A WebSocket close code the relay sends (RFC 6455 §7.4, and two application codes).
///
/// ```
/// use tickwire_core::hub::{CloseCode, CloseReason};
///
/// assert_eq!(CloseReason::SlowConsumer.close_code(), CloseCode::SlowConsumer);
/// assert_eq!(CloseCode::SlowConsumer.code(), 4001);
/// assert_eq!(CloseCode::from_code(1013), Some(CloseCode::TryAgainLater));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloseCode {
    /// 1000: the exchange is over (the answer to a client's close).
    Normal,
    /// 1001: the relay is shutting down.
    GoingAway,
    /// 1009: a message over the WebSocket layer's size limit.
    MessageTooBig,
    /// 1011: the connection failed on the relay's side.
    InternalError,
    /// 1013: refused at the connection limit; try again later.
    TryAgainLater,
    /// 4001: it read too slowly past the slow-consumer deadline.
    SlowConsumer,
    /// 4002: it sent nothing within the keepalive timeout.
    KeepaliveTimeout,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 7] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::TryAgainLater,
        CloseCode::SlowConsumer,
        CloseCode::KeepaliveTimeout,
    ];

    /// The number on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::SlowConsumer => 4001,
            CloseCode::KeepaliveTimeout => 4002,
        }
    }

    /// The code with this number, if the relay uses it.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL
            .into_iter()
            .find(|known| known.code() == code)
    }

    /// The short reason text sent in the close frame (ASCII, well under the 123-byte limit).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "relay shutting down",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "connection failed",
            CloseCode::TryAgainLater => "connection limit",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::KeepaliveTimeout => "keepalive timeout",
        }
    }
}

/// Why a downstream connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloseReason {
    /// The client closed it.
    ClientClosed,
    /// The socket failed (reset, protocol error).
    SocketError,
    /// The client sent a message over the WebSocket layer's size limit.
    MessageTooBig,
    /// It stayed behind past the slow-consumer deadline.
    SlowConsumer,
    /// It sent nothing within the keepalive timeout.
    KeepaliveTimeout,
    /// The relay is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Every reason, for metrics.
    pub const ALL: [CloseReason; 6] = [
        CloseReason::ClientClosed,
        CloseReason::SocketError,
        CloseReason::MessageTooBig,
        CloseReason::SlowConsumer,
        CloseReason::KeepaliveTimeout,
        CloseReason::Shutdown,
    ];

    /// Lower-case name, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::SocketError => "socket_error",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::KeepaliveTimeout => "keepalive_timeout",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// The close code the server sends for this ending (if the socket still takes a frame).
    pub fn close_code(self) -> CloseCode {
        match self {
            CloseReason::ClientClosed => CloseCode::Normal,
            CloseReason::SocketError => CloseCode::InternalError,
            CloseReason::MessageTooBig => CloseCode::MessageTooBig,
            CloseReason::SlowConsumer => CloseCode::SlowConsumer,
            CloseReason::KeepaliveTimeout => CloseCode::KeepaliveTimeout,
            CloseReason::Shutdown => CloseCode::GoingAway,
        }
    }

    pub(super) fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|reason| *reason == self)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_every_reason_has_its_own() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
            assert!(code.reason().len() < 123 && code.reason().is_ascii());
        }
        assert_eq!(CloseCode::from_code(1002), None);
        let mut codes: Vec<u16> = CloseReason::ALL
            .iter()
            .map(|reason| reason.close_code().code())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CloseReason::ALL.len());
        for (index, reason) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), index);
        }
    }
}
