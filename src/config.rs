//! The server's configuration: one typed struct, loaded from an optional
//! TOML file, then environment variables, then flags (later wins), with
//! defaults that run out of the box.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;
use wish::IceServer;

/// Dionysia: a WebRTC-first live streaming server. Publish over WHIP, watch
/// over WHEP at sub-second latency.
#[derive(Parser, Debug, Default)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// TOML config file (see docs/configuration.md). Flags and environment override it.
    #[arg(long, env = "DIONYSIA_CONFIG")]
    pub config: Option<PathBuf>,

    /// HTTP address for WHIP, WHEP, the pages and /healthz [default: 0.0.0.0:8080]
    #[arg(long, env = "DIONYSIA_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// The one UDP address all WebRTC media uses [default: 0.0.0.0:8189]
    #[arg(long, env = "DIONYSIA_UDP_LISTEN")]
    pub udp_listen: Option<SocketAddr>,

    /// IP to advertise in ICE candidates (repeatable; NAT 1:1, containers).
    /// Default: every interface address, loopback included.
    #[arg(long = "public-ip", env = "DIONYSIA_PUBLIC_IP", value_delimiter = ',')]
    pub public_ips: Vec<IpAddr>,

    /// A room and its stream key, NAME:STREAM_KEY (repeatable). With no room
    /// configured, a room `demo` with a random key is created.
    #[arg(long = "room", env = "DIONYSIA_ROOMS", value_delimiter = ',')]
    pub rooms: Vec<String>,

    /// STUN/TURN server for clients, as URL or URL|USERNAME|CREDENTIAL (repeatable).
    #[arg(
        long = "ice-server",
        env = "DIONYSIA_ICE_SERVERS",
        value_delimiter = ','
    )]
    pub ice_servers: Vec<String>,

    /// Most WebRTC sessions (publishers + viewers) at once [default: 2000]
    #[arg(long, env = "DIONYSIA_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,

    /// Seconds viewers stay connected waiting for a publisher that left [default: 30]
    #[arg(long, env = "DIONYSIA_PUBLISHER_GRACE")]
    pub publisher_grace: Option<u64>,
}

/// The config file's shape (every field optional).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http_listen: Option<SocketAddr>,
    pub udp_listen: Option<SocketAddr>,
    #[serde(default)]
    pub public_ips: Vec<IpAddr>,
    #[serde(default)]
    pub rooms: Vec<RoomConfig>,
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    pub max_sessions: Option<usize>,
    pub publisher_grace: Option<u64>,
}

#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    pub name: String,
    pub stream_key: String,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_listen: SocketAddr,
    pub sfu: sfu::SfuConfig,
    pub rooms: Vec<RoomConfig>,
    pub ice_servers: Vec<IceServer>,
}

impl Config {
    pub fn load(cli: Cli) -> anyhow::Result<Config> {
        let file: FileConfig = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut sfu = sfu::SfuConfig::default();
        if let Some(a) = cli.udp_listen.or(file.udp_listen) {
            sfu.udp_listen = a;
        }
        sfu.candidate_ips = if cli.public_ips.is_empty() {
            file.public_ips
        } else {
            cli.public_ips
        };
        if let Some(n) = cli.max_sessions.or(file.max_sessions) {
            sfu.max_sessions = n;
        }
        if let Some(s) = cli.publisher_grace.or(file.publisher_grace) {
            sfu.publisher_grace = Duration::from_secs(s);
        }
        let mut rooms = file.rooms;
        for spec in &cli.rooms {
            let Some((name, key)) = spec.split_once(':') else {
                bail!("--room takes NAME:STREAM_KEY, got {spec:?}");
            };
            rooms.retain(|r| r.name != name);
            rooms.push(RoomConfig {
                name: name.to_string(),
                stream_key: key.to_string(),
            });
        }
        for r in &rooms {
            validate_room_name(&r.name)?;
            if r.stream_key.len() < 4 || r.stream_key.len() > 256 {
                bail!("room {:?}: a stream key has 4 to 256 characters", r.name);
            }
        }
        let mut ice_servers = file.ice_servers;
        for spec in &cli.ice_servers {
            let mut parts = spec.split('|');
            let url = parts.next().unwrap_or_default().to_string();
            if !(url.starts_with("stun:") || url.starts_with("turn:") || url.starts_with("turns:"))
            {
                bail!("--ice-server takes a stun:, turn: or turns: URL, got {url:?}");
            }
            ice_servers.push(IceServer {
                url,
                username: parts.next().map(str::to_string),
                credential: parts.next().map(str::to_string),
            });
        }
        Ok(Config {
            http_listen: cli
                .http_listen
                .or(file.http_listen)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8080))),
            sfu,
            rooms,
            ice_servers,
        })
    }
}

/// Room names go into URLs: 1–64 of `A-Z a-z 0-9 _ -`.
pub fn validate_room_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        bail!("room name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_rooms_parse() {
        let dir = std::env::temp_dir().join(format!("dionysia-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "http_listen = \"127.0.0.1:9000\"\nudp_listen = \"127.0.0.1:9001\"\n\
             [[rooms]]\nname = \"a\"\nstream_key = \"keyA\"\n\
             [[ice_servers]]\nurl = \"stun:stun.example.net\"\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(path),
            udp_listen: Some("127.0.0.1:9999".parse().unwrap()),
            rooms: vec!["a:other".into(), "b:keyB".into()],
            ice_servers: vec!["turn:t.example.net|u|p".into()],
            ..Default::default()
        };
        let c = Config::load(cli).unwrap();
        assert_eq!(c.http_listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.sfu.udp_listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(
            c.rooms,
            vec![
                RoomConfig {
                    name: "a".into(),
                    stream_key: "other".into()
                },
                RoomConfig {
                    name: "b".into(),
                    stream_key: "keyB".into()
                }
            ]
        );
        assert_eq!(c.ice_servers.len(), 2);
        assert_eq!(c.ice_servers[1].username.as_deref(), Some("u"));
    }

    #[test]
    fn bad_values_are_refused() {
        let bad_room = Cli {
            rooms: vec!["no-key".into()],
            ..Default::default()
        };
        assert!(Config::load(bad_room).is_err());
        let bad_name = Cli {
            rooms: vec!["a/b:key1".into()],
            ..Default::default()
        };
        assert!(Config::load(bad_name).is_err());
        let bad_ice = Cli {
            ice_servers: vec!["http://x".into()],
            ..Default::default()
        };
        assert!(Config::load(bad_ice).is_err());
        assert!(validate_room_name("ok_Room-1").is_ok());
        assert!(validate_room_name("").is_err());
    }
}
