//! The one error type of the crate. Every malformed byte sequence a peer can
//! send ends here as a value; the caller drops that connection and nothing else.

/// Why a session, a parser or the packetizer refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// C0 named a protocol version other than 3 (6 would be RTMPE, not spoken here).
    #[error("handshake: unsupported RTMP version {0} (only plain RTMP, version 3, is accepted)")]
    UnsupportedVersion(u8),

    /// A fmt 1/2/3 chunk header referred to a chunk stream that never had a fmt 0 header.
    #[error("chunk stream {csid}: fmt {fmt} header with no previous header on that stream")]
    NoPreviousHeader { csid: u32, fmt: u8 },

    /// The peer opened more chunk streams than [`ChunkLimits::max_chunk_streams`](crate::ChunkLimits).
    #[error("too many chunk streams (limit {limit})")]
    TooManyChunkStreams { limit: usize },

    /// Set Chunk Size with 0 or a value above the configured maximum.
    #[error("chunk size {size} out of range 1..={max}")]
    InvalidChunkSize { size: u32, max: u32 },

    /// A message header announced more bytes than the configured maximum.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge { size: u32, limit: u32 },

    /// Partially received messages across all chunk streams hold too much memory.
    #[error("partial messages exceed the buffer limit of {limit} bytes")]
    BufferLimit { limit: usize },

    /// A structure ended before its last field.
    #[error("truncated {what}")]
    Truncated { what: &'static str },

    /// A structure is complete but its content makes no sense.
    #[error("malformed {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },

    /// The peer broke the command sequence (e.g. publish before connect).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),

    /// The caller acted on a session in the wrong state (e.g. accept without a pending publish).
    #[error("invalid call: {0}")]
    InvalidCall(&'static str),
}

impl Error {
    pub(crate) fn truncated(what: &'static str) -> Self {
        Error::Truncated { what }
    }

    pub(crate) fn malformed(what: &'static str, reason: &'static str) -> Self {
        Error::Malformed { what, reason }
    }
}
