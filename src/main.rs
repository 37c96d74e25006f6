//! The `dionysia` binary: reads the configuration, opens the room database,
//! starts the SFU's media thread and the HTTP server (WHIP, WHEP, the room
//! API, pages, health), and prints where to publish and watch. With a
//! subcommand (`dionysia room ...`) it works on the database and exits.

mod api;
mod auth;
mod cli;
mod config;
mod guard;
mod metrics;
mod rooms;
mod store;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use clap::Parser;
use tracing::info;

use crate::config::{Cli, Config};
use crate::rooms::StoredRooms;
use crate::store::{SqliteStore, Store};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,str0m=warn".into()),
        )
        .init();
    let mut cli = Cli::parse();
    let command = cli.command.take();
    let config = Config::load(cli)?;
    if let Some(command) = command {
        return cli::run(command, &config);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&config.data_dir)
            .with_context(|| format!("opening the database in {}", config.data_dir.display()))?,
    );
    let setup = cli::prepare(&config, store.as_ref())?;
    let sfu = sfu::Sfu::start(config.sfu.clone())
        .with_context(|| format!("binding the media port {}", config.sfu.udp_listen))?;
    let viewer_tokens = Arc::new(auth::ViewerTokenKey::new(setup.viewer_token_key.clone()));
    let stored_rooms = Arc::new(StoredRooms::new(store.clone(), viewer_tokens.clone()));
    let directory: Arc<dyn wish::RoomDirectory> = stored_rooms.clone();
    let hls_audience = Arc::new(rooms::HlsAudience::default());
    let state = wish::Wish {
        sfu: sfu.clone(),
        rooms: directory.clone(),
        ice_servers: Arc::new(config.ice_servers.clone()),
    };
    let webhooks = webhooks::Webhooks::start(
        config.webhooks.clone(),
        config.webhook_secret.clone(),
        store.clone(),
    );
    let guard = guard::Guard::new(config.auth_failure_limit, webhooks.clone());
    let rooms = store.rooms()?;
    // RTMP publishers offer their original AAC here; the HLS bridge takes it
    // untouched instead of transcoding the room's Opus back to AAC.
    let sources = sfu::SourceRegistry::default();
    // RTMP ingest: a stream key names its room (rtmp://host/live/KEY).
    if let Some(addr) = config.rtmp_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding RTMP {addr} (use --rtmp-listen off to disable)"))?;
        let store = store.clone();
        let keys: rtmp::StreamKeys =
            Arc::new(move |key: &str| match store.room_by_stream_key(key) {
                Ok(room) => room.map(|r| r.name),
                Err(e) => {
                    // Fail closed: an unreadable database admits nobody.
                    tracing::warn!("stream key lookup failed: {e}");
                    None
                }
            });
        let rtmp_config = rtmp::ServerConfig {
            sources: Some(sources.clone()),
            on_rejected: Some(guard.rtmp_rejections()),
            admit: Some(guard.rtmp_admission()),
            max_connections_per_ip: config.rtmp_max_connections_per_ip,
            ..rtmp::ServerConfig::default()
        };
        tracing::info!("RTMP ingest on {addr}");
        tokio::spawn(rtmp::serve_with(listener, sfu.clone(), keys, rtmp_config));
    }
    let keys = webhooks::KnownKeys::default();
    for r in &rooms {
        keys.set(&r.name, &r.stream_key);
    }
    tokio::spawn(webhooks::watch(
        sfu.clone(),
        store.clone(),
        webhooks.clone(),
        keys.clone(),
    ));
    let api = api::Api {
        store: store.clone(),
        sfu: sfu.clone(),
        config_admin_hashes: Arc::new(
            config
                .admin_tokens
                .iter()
                .map(|t| auth::sha256_hex(t))
                .collect(),
        ),
        viewer_tokens,
        keys,
        hls_audience: hls_audience.clone(),
        started: std::time::Instant::now(),
        public_url: config.public_url.clone(),
        http_listen: config.http_listen,
    };
    let app = Router::new()
        .merge(whip::router())
        .merge(whep::router())
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn(wish::cors))
        .with_state(state)
        .merge(api::router(api))
        .merge(web::router())
        .merge(hls_bridge::router(
            sfu.clone(),
            hls_bridge::HlsConfig {
                sources: Some(sources),
                room_ladder: Some(room_ladder(store.clone())),
                ..hls_bridge::HlsConfig::default()
            },
        ))
        .layer(axum::middleware::from_fn_with_state(
            rooms::HlsGate {
                rooms: stored_rooms,
                audience: hls_audience.clone(),
            },
            rooms::hls_access,
        ))
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard));
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP {}", config.http_listen))?;
    print_banner(
        &config,
        listener.local_addr()?,
        sfu.advertised(),
        &rooms,
        &setup,
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    info!("stopped");
    Ok(())
}

/// The HLS ladder a room's settings ask for (read at each publish).
fn room_ladder(store: Arc<dyn Store>) -> hls_bridge::RoomLadder {
    hls_bridge::RoomLadder(Arc::new(move |room: &str| {
        store
            .room_by_name(room)
            .ok()
            .flatten()
            .map(|r| r.settings.ladder)
    }))
}

/// Rooms listed at startup; more are summarized.
const BANNER_ROOMS: usize = 10;

fn print_banner(
    config: &Config,
    http: SocketAddr,
    candidates: &[SocketAddr],
    rooms: &[store::StoredRoom],
    setup: &cli::Setup,
) {
    let base = config.public_url.clone().unwrap_or_else(|| {
        if http.ip().is_unspecified() {
            format!("http://localhost:{}", http.port())
        } else {
            format!("http://{http}")
        }
    });
    let list: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
    info!(
        "HTTP on {http}; WebRTC media on UDP {} (candidates: {}); database in {}",
        config.sfu.udp_listen,
        list.join(", "),
        config.data_dir.display()
    );
    if let Some(token) = &setup.new_admin_token {
        println!();
        println!("Admin API token (shown only this once; only its hash is stored):");
        println!("  {token}");
        println!("  e.g. curl -H 'Authorization: Bearer {token}' {base}/api/v1/rooms");
    }
    for r in rooms.iter().take(BANNER_ROOMS) {
        let private = if r.settings.private { " (private)" } else { "" };
        println!();
        println!("Room {:?}{private}", r.name);
        println!("  WHIP (publish): {base}/whip/{}", r.name);
        if setup.new_demo_room.as_deref() == Some(r.name.as_str()) {
            println!("  Stream key:     {}", r.stream_key);
        }
        if let Some(rtmp) = config.rtmp_listen {
            let host = base
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            println!(
                "  RTMP (publish): rtmp://{host}:{}/live/<stream key>",
                rtmp.port()
            );
        }
        println!("  WHEP (watch):   {base}/whep/{}", r.name);
        println!("  Publish page:   {base}/publish/{}", r.name);
        println!("  Watch page:     {base}/watch/{}", r.name);
    }
    if rooms.len() > BANNER_ROOMS {
        println!();
        println!(
            "... and {} more rooms (dionysia room list)",
            rooms.len() - BANNER_ROOMS
        );
    }
    println!();
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
