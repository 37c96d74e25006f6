//! The errors the SFU hands back to its callers (the WHIP and WHEP edges map
//! them to HTTP problem responses).

/// Why an SFU command failed.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// The SDP offer could not be parsed.
    #[error("the SDP offer is malformed: {0}")]
    BadOffer(String),
    /// The offer parsed but we can receive or send nothing in it.
    #[error("no media we can {direction} in the offer; we accept {accepted}")]
    NoUsableMedia {
        direction: &'static str,
        accepted: String,
    },
    /// A publisher is already live in the room.
    #[error("room {0:?} already has a live publisher")]
    PublisherExists(String),
    /// The room has no publisher (and is not within a reconnect grace period).
    #[error("room {0:?} is not live")]
    NotLive(String),
    /// No such session (unknown, ended, or not of this room and role).
    #[error("no such session")]
    NoSession,
    /// A PATCH named an ICE session (ufrag) that is no longer current.
    #[error("the ICE session has changed (stale ETag)")]
    StaleIceSession,
    /// A layer request named no layer of the room.
    #[error("{0}")]
    BadLayer(String),
    /// The trickle/ICE-restart fragment was malformed.
    #[error("the SDP fragment is malformed: {0}")]
    BadFragment(String),
    /// The server is at its configured session limit.
    #[error("the server is at capacity ({0} sessions)")]
    AtCapacity(usize),
    /// The SFU loop is gone (shutting down).
    #[error("the media engine is not running")]
    Stopped,
}
