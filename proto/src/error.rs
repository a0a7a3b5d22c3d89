//! Why a request fails: one variant per reason, each mapped to the STUN error code that goes
//! on the wire. The server builds every error response from one of these, in one place.

use std::net::SocketAddr;

use stun_types::attribute::AttributeType;
use stun_types::attribute::ErrorCode;

/// A request the core refuses, with what the error response needs beyond its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// 300: redirect the Allocate to this server (RFC 8489 §10).
    TryAlternate(SocketAddr),
    /// 400: missing, malformed or conflicting attributes.
    BadRequest,
    /// 401: no or wrong credentials; answered with a challenge.
    Unauthorized,
    /// 403: the peer is not allowed.
    Forbidden,
    /// 403: the user's credentials are revoked (the management API).
    Revoked,
    /// 420: comprehension-required attributes the method does not know (RFC 8489 §7.3.1).
    UnknownAttributes(Vec<AttributeType>),
    /// 437: no allocation on this 5-tuple, or another transaction's allocation.
    AllocationMismatch,
    /// 438: the nonce is stale or not ours; answered with a challenge.
    StaleNonce,
    /// 440: an address family the server cannot relay in.
    AddressFamilyNotSupported,
    /// 441: the allocation belongs to another user.
    WrongCredentials,
    /// 442: a transport other than UDP.
    UnsupportedTransportProtocol,
    /// 443: a peer or family that the allocation's relays cannot serve.
    PeerAddressFamilyMismatch,
    /// 486: the user's allocation quota is reached.
    AllocationQuotaReached,
    /// 508: the server's quota, a per-allocation cap, or no relay port.
    InsufficientCapacity,
}

impl Error {
    /// The STUN error code (RFC 8489 §14.8, RFC 8656 §19).
    pub fn code(&self) -> u16 {
        match self {
            Error::TryAlternate(_) => ErrorCode::TRY_ALTERNATE,
            Error::BadRequest => ErrorCode::BAD_REQUEST,
            Error::Unauthorized => ErrorCode::UNAUTHORIZED,
            Error::Forbidden | Error::Revoked => ErrorCode::FORBIDDEN,
            Error::UnknownAttributes(_) => ErrorCode::UNKNOWN_ATTRIBUTE,
            Error::AllocationMismatch => ErrorCode::ALLOCATION_MISMATCH,
            Error::StaleNonce => ErrorCode::STALE_NONCE,
            Error::AddressFamilyNotSupported => ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
            Error::WrongCredentials => ErrorCode::WRONG_CREDENTIALS,
            Error::UnsupportedTransportProtocol => ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
            Error::PeerAddressFamilyMismatch => ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
            Error::AllocationQuotaReached => ErrorCode::ALLOCATION_QUOTA_REACHED,
            Error::InsufficientCapacity => ErrorCode::INSUFFICIENT_CAPACITY,
        }
    }

    /// 401 and 438 are answered with a fresh nonce and never signed (RFC 8489 §9.2.4).
    pub fn is_challenge(&self) -> bool {
        matches!(self, Error::Unauthorized | Error::StaleNonce)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code();
        write!(f, "{code} {}", ErrorCode::default_reason_for_code(code))
    }
}

impl std::error::Error for Error {}

impl From<&Error> for ErrorCode {
    /// The ERROR-CODE attribute with the usual reason phrase.
    fn from(error: &Error) -> Self {
        // Every code above is in 300..=699, the only range `build` refuses to leave.
        ErrorCode::builder(error.code())
            .build()
            .expect("a STUN error code in 300..=699")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_wire_code() {
        let cases = [
            (Error::TryAlternate("192.0.2.1:3478".parse().unwrap()), 300),
            (Error::BadRequest, 400),
            (Error::Unauthorized, 401),
            (Error::Forbidden, 403),
            (Error::UnknownAttributes(vec![]), 420),
            (Error::AllocationMismatch, 437),
            (Error::StaleNonce, 438),
            (Error::AddressFamilyNotSupported, 440),
            (Error::WrongCredentials, 441),
            (Error::UnsupportedTransportProtocol, 442),
            (Error::PeerAddressFamilyMismatch, 443),
            (Error::AllocationQuotaReached, 486),
            (Error::InsufficientCapacity, 508),
        ];
        for (error, code) in cases {
            assert_eq!(ErrorCode::from(&error).code(), code, "{error:?}");
            assert_eq!(error.is_challenge(), code == 401 || code == 438);
        }
    }
}
