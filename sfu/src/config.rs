//! The SFU's settings: one typed struct, filled in by the binary from its
//! config file, environment and flags.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Settings of the media engine.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The one UDP socket every peer's media goes through.
    pub udp_listen: SocketAddr,
    /// Addresses to advertise as ICE host candidates (with the UDP port).
    /// Empty: the machine's interface addresses, loopback included.
    pub candidate_ips: Vec<IpAddr>,
    /// Most WebRTC sessions (publishers + viewers) at once; past it, `AtCapacity`.
    pub max_sessions: usize,
    /// How long viewers stay connected, waiting, after their publisher left.
    pub publisher_grace: Duration,
    /// Least time between two keyframe requests to one publisher layer.
    pub keyframe_request_interval: Duration,
    /// How long a session may take to connect (ICE + DTLS) before it is dropped.
    pub connect_timeout: Duration,
    /// Bytes of the current GOP kept per video layer for instant start (0: off).
    pub gop_cache_bytes: usize,
    /// Media threads (shards of the peers); 0: one per core.
    pub media_threads: usize,
    /// Send a viewer's runs of equal-size datagrams as one UDP GSO message
    /// where the kernel supports it.
    pub udp_gso: bool,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            udp_listen: SocketAddr::from(([0, 0, 0, 0], 8189)),
            candidate_ips: Vec::new(),
            max_sessions: 2000,
            publisher_grace: Duration::from_secs(30),
            keyframe_request_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(20),
            gop_cache_bytes: 4 * 1024 * 1024,
            media_threads: 0,
            udp_gso: true,
        }
    }
}
