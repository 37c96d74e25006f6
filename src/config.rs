//! The server's configuration: one typed struct, loaded from an optional
//! TOML file, then environment variables, then flags (later wins), with
//! defaults that run out of the box. Also the operator's subcommands
//! (`dionysia room ...`), which share the flags that say where the data is.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use wish::IceServer;

/// Dionysia: a WebRTC-first live streaming server. Publish over WHIP, watch
/// over WHEP at sub-second latency.
#[derive(Parser, Debug, Default)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// With no subcommand, run the server.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Directory of the database (created on first start) [default: ./data]
    #[arg(long, env = "DIONYSIA_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

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

    /// A room and its stream key, NAME:STREAM_KEY (repeatable): created in
    /// the database, or its key set, at every start. With no room at all, a
    /// room `demo` with a random key is created.
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

    /// Media threads sharing the WebRTC peers; 0 = one per core [default: 0]
    #[arg(long, env = "DIONYSIA_MEDIA_THREADS")]
    pub media_threads: Option<usize>,

    /// Send runs of datagrams to one viewer as one UDP GSO message (Linux) [default: true]
    #[arg(long, env = "DIONYSIA_UDP_GSO")]
    pub udp_gso: Option<bool>,

    /// Seconds viewers stay connected waiting for a publisher that left [default: 30]
    #[arg(long, env = "DIONYSIA_PUBLISHER_GRACE")]
    pub publisher_grace: Option<u64>,

    /// RTMP ingest address (rtmp://host/live/STREAM_KEY), or `off` [default: 0.0.0.0:1935]
    #[arg(long, env = "DIONYSIA_RTMP_LISTEN")]
    pub rtmp_listen: Option<String>,

    /// Most RTMP connections at once from one IP address (an IPv6 /64 counts
    /// as one) [default: 8]
    #[arg(long, env = "DIONYSIA_RTMP_MAX_CONNECTIONS_PER_IP")]
    pub rtmp_max_connections_per_ip: Option<usize>,

    /// A bearer token for the admin API (repeatable). With none here and none
    /// stored, the first start generates one, stores its hash and prints it once.
    #[arg(
        long = "admin-token",
        env = "DIONYSIA_ADMIN_TOKENS",
        value_delimiter = ','
    )]
    pub admin_tokens: Vec<String>,

    /// URL that receives signed webhook events (repeatable).
    #[arg(long = "webhook", env = "DIONYSIA_WEBHOOKS", value_delimiter = ',')]
    pub webhooks: Vec<String>,

    /// Secret for the webhooks' HMAC-SHA256 signature (needed with --webhook).
    #[arg(long, env = "DIONYSIA_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,

    /// Base URL clients reach this server at, for the URLs the API hands out
    /// (e.g. https://live.example.com) [default: from the request's Host]
    #[arg(long, env = "DIONYSIA_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Failed authentications allowed per source IP per minute before `429` (0: no limit) [default: 30]
    #[arg(long, env = "DIONYSIA_AUTH_FAILURE_LIMIT")]
    pub auth_failure_limit: Option<u32>,
}

/// Operator subcommands; they work on the same database as the server.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, list and re-key rooms.
    #[command(subcommand)]
    Room(RoomCommand),
    /// Admin API tokens.
    #[command(subcommand, name = "admin-token")]
    AdminToken(AdminTokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum RoomCommand {
    /// Create a room and print its stream key and URLs.
    Create(CreateRoom),
    /// List the rooms.
    List {
        /// Also print each room's stream key.
        #[arg(long)]
        show_keys: bool,
    },
    /// Give a room a new stream key (the old one stops working at once).
    RotateKey { name: String },
    /// Delete a room.
    Delete { name: String },
}

#[derive(Args, Debug)]
pub struct CreateRoom {
    pub name: String,
    /// Viewers need a viewer token.
    #[arg(long)]
    pub private: bool,
    /// Most WebRTC viewers at once.
    #[arg(long)]
    pub max_viewers: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum AdminTokenCommand {
    /// Generate a new admin token, store its hash and print it (once).
    Create,
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
    pub media_threads: Option<usize>,
    pub udp_gso: Option<bool>,
    pub publisher_grace: Option<u64>,
    pub rtmp_listen: Option<String>,
    pub rtmp_max_connections_per_ip: Option<usize>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub admin_tokens: Vec<String>,
    #[serde(default)]
    pub webhooks: Vec<String>,
    pub webhook_secret: Option<String>,
    pub public_url: Option<String>,
    pub auth_failure_limit: Option<u32>,
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
    /// RTMP ingest; `None` when switched off.
    pub rtmp_listen: Option<SocketAddr>,
    pub rtmp_max_connections_per_ip: usize,
    pub sfu: sfu::SfuConfig,
    pub rooms: Vec<RoomConfig>,
    pub ice_servers: Vec<IceServer>,
    pub data_dir: PathBuf,
    pub admin_tokens: Vec<String>,
    pub webhooks: Vec<String>,
    pub webhook_secret: Option<String>,
    /// Without a trailing slash.
    pub public_url: Option<String>,
    pub auth_failure_limit: u32,
}

/// Admin tokens and webhook secrets: long enough not to be guessed.
const MIN_SECRET_LEN: usize = 16;

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
        if let Some(n) = cli.media_threads.or(file.media_threads) {
            if n > 32 {
                bail!("media_threads is 0 (one per core) to 32, got {n}");
            }
            sfu.media_threads = n;
        }
        if let Some(on) = cli.udp_gso.or(file.udp_gso) {
            sfu.udp_gso = on;
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
        let admin_tokens = if cli.admin_tokens.is_empty() {
            file.admin_tokens
        } else {
            cli.admin_tokens
        };
        if admin_tokens.iter().any(|t| t.len() < MIN_SECRET_LEN) {
            bail!("an admin token has at least {MIN_SECRET_LEN} characters");
        }
        let webhooks = if cli.webhooks.is_empty() {
            file.webhooks
        } else {
            cli.webhooks
        };
        for url in &webhooks {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--webhook takes an http:// or https:// URL, got {url:?}");
            }
        }
        let webhook_secret = cli.webhook_secret.or(file.webhook_secret);
        match &webhook_secret {
            None if !webhooks.is_empty() => {
                bail!("webhooks need a signing secret: --webhook-secret / DIONYSIA_WEBHOOK_SECRET")
            }
            Some(s) if s.len() < MIN_SECRET_LEN => {
                bail!("the webhook secret has at least {MIN_SECRET_LEN} characters")
            }
            _ => {}
        }
        let public_url = cli
            .public_url
            .or(file.public_url)
            .map(|u| u.trim_end_matches('/').to_string());
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                bail!("--public-url takes an http:// or https:// URL, got {u:?}");
            }
        }
        Ok(Config {
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            admin_tokens,
            webhooks,
            webhook_secret,
            public_url,
            auth_failure_limit: cli
                .auth_failure_limit
                .or(file.auth_failure_limit)
                .unwrap_or(30),
            rtmp_listen: parse_rtmp_listen(
                cli.rtmp_listen.as_deref().or(file.rtmp_listen.as_deref()),
            )?,
            rtmp_max_connections_per_ip: cli
                .rtmp_max_connections_per_ip
                .or(file.rtmp_max_connections_per_ip)
                .unwrap_or(8)
                .max(1),
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

/// `off` (or `none`, `false`, empty) switches RTMP off; default `0.0.0.0:1935`.
fn parse_rtmp_listen(v: Option<&str>) -> anyhow::Result<Option<SocketAddr>> {
    match v.map(str::trim) {
        None => Ok(Some(SocketAddr::from(([0, 0, 0, 0], 1935)))),
        Some("" | "off" | "none" | "false") => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("--rtmp-listen takes ADDR:PORT or off, got {a:?}")),
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
        let hook_without_secret = Cli {
            webhooks: vec!["http://hooks.example.net/x".into()],
            ..Default::default()
        };
        assert!(Config::load(hook_without_secret).is_err());
        let short_token = Cli {
            admin_tokens: vec!["short".into()],
            ..Default::default()
        };
        assert!(Config::load(short_token).is_err());
        let bad_url = Cli {
            public_url: Some("live.example.com".into()),
            ..Default::default()
        };
        assert!(Config::load(bad_url).is_err());
    }

    #[test]
    fn access_settings_default_and_load() {
        let c = Config::load(Cli::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.auth_failure_limit, 30);
        assert!(c.admin_tokens.is_empty() && c.webhooks.is_empty());
        let c = Config::load(Cli {
            data_dir: Some("/tmp/d".into()),
            admin_tokens: vec!["0123456789abcdef".into()],
            webhooks: vec!["https://hooks.example.net/x".into()],
            webhook_secret: Some("0123456789abcdef".into()),
            public_url: Some("https://live.example.com/".into()),
            auth_failure_limit: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://live.example.com"));
        assert_eq!(c.auth_failure_limit, 0);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
    }
}
