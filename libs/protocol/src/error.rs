//! The crate's error types. Every message is written for the client who sent the frame: it says
//! what was wrong and, where it helps, what would have been accepted.

use crate::MessageType;

/// Why a wire frame could not be turned into a [`Message`](crate::Message).
///
/// All of these are the sender's mistake, to be answered as PROTOCOL §6 says (a 4xx with the
/// message, or a close with code 1008 — 1009 for [`DecodeError::TooLarge`]). Decoding never
/// panics instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is longer than [`Limits::max_bytes`](crate::Limits); checked before any parsing.
    #[error("frame is {size} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// The frame's length in bytes.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// The text frame is not valid JSON (truncated, malformed, or nested more than 128 deep).
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    /// The text frame is JSON but not an object (an array, a string, a number…).
    #[error("frame must be a JSON object")]
    NotAnObject,
    /// `_v` names a version this server does not speak as text, or is not a number.
    #[error(
        "unsupported message version `{0}`: text frames are v1 (`_v` absent or below 2) or v2 \
         (`_v` from 2 up to but not including 3); v3 is sent as binary frames"
    )]
    UnknownVersion(String),
    /// A field the encoding requires is absent (or `null`).
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field is present with a JSON type the encoding does not allow.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// Where the field is, e.g. `id` or `head.to`.
        field: &'static str,
        /// What would have been accepted, e.g. `a string`.
        expected: &'static str,
    },
    /// The binary frame is not a valid v3 protobuf `Message` (truncated, garbage, bad UTF-8).
    #[error("frame is not a valid v3 protobuf message: {0}")]
    Protobuf(String),
}

/// Why a decoded message is not acceptable from a client
/// (see [`Message::validate_from_client`](crate::Message::validate_from_client)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// The message has no id.
    #[error("message id must not be empty")]
    EmptyId,
    /// The id is longer than [`MAX_ID_BYTES`](crate::MAX_ID_BYTES).
    #[error("message id is {len} bytes long; at most {max} bytes are allowed")]
    IdTooLong {
        /// The id's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Only the server sends `SERVER_ACK`.
    #[error("clients may not send SERVER_ACK messages; acknowledge with CLIENT_ACK")]
    ServerAckFromClient,
    /// A `MESSAGE`, `NOTIFICATION` or `CUSTOM` message without a destination.
    #[error("a {kind} message needs a destination (`to` / `head.to` / `destination`)")]
    MissingDestination {
        /// The message's kind.
        kind: MessageType,
    },
    /// The content is not JSON; this server only accepts JSON content.
    #[error("message content must be JSON (this server only accepts JSON content): {reason}")]
    ContentNotJson {
        /// What the JSON parser objected to.
        reason: String,
    },
}

/// A name that is not one of a closed set of canonical names
/// (from [`MessageType`]'s or [`Channel`](crate::Channel)'s `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`; expected one of {expected}")]
pub struct UnknownName {
    /// What was being parsed: `message type` or `channel`.
    pub what: &'static str,
    /// The name that was given.
    pub name: String,
    /// The accepted names, comma-separated.
    pub expected: &'static str,
}
