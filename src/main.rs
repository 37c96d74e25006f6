//! The `dionysia` binary: reads the configuration, starts the SFU's media
//! thread and the HTTP server (WHIP, WHEP, pages, health), and prints where
//! to publish and watch.

mod config;
mod rooms;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use clap::Parser;
use tracing::info;

use crate::config::{Cli, Config, RoomConfig};
use crate::rooms::ConfiguredRooms;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,str0m=warn".into()),
        )
        .init();
    let mut config = Config::load(Cli::parse())?;
    let generated_demo = config.rooms.is_empty();
    if generated_demo {
        config.rooms.push(RoomConfig {
            name: "demo".into(),
            stream_key: random_key(),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    runtime.block_on(serve(config, generated_demo))
}

async fn serve(config: Config, generated_demo: bool) -> anyhow::Result<()> {
    let sfu = sfu::Sfu::start(config.sfu.clone())
        .with_context(|| format!("binding the media port {}", config.sfu.udp_listen))?;
    let rooms = ConfiguredRooms::new(
        config
            .rooms
            .iter()
            .map(|r| (r.name.clone(), r.stream_key.clone())),
    );
    let state = wish::Wish {
        sfu: sfu.clone(),
        rooms: Arc::new(rooms),
        ice_servers: Arc::new(config.ice_servers.clone()),
    };
    let app = Router::new()
        .merge(whip::router())
        .merge(whep::router())
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn(wish::cors))
        .with_state(state)
        .merge(web::router());
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP {}", config.http_listen))?;
    print_banner(
        &config,
        listener.local_addr()?,
        sfu.advertised(),
        generated_demo,
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    info!("stopped");
    Ok(())
}

fn print_banner(
    config: &Config,
    http: SocketAddr,
    candidates: &[SocketAddr],
    generated_demo: bool,
) {
    let host = if http.ip().is_unspecified() {
        format!("localhost:{}", http.port())
    } else {
        http.to_string()
    };
    let list: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
    info!(
        "HTTP on {http}; WebRTC media on UDP {} (candidates: {})",
        config.sfu.udp_listen,
        list.join(", ")
    );
    for r in &config.rooms {
        println!();
        println!("Room {:?}", r.name);
        println!("  WHIP (publish): http://{host}/whip/{}", r.name);
        if generated_demo {
            println!("  Stream key:     {}", r.stream_key);
        }
        println!("  WHEP (watch):   http://{host}/whep/{}", r.name);
        println!("  Publish page:   http://{host}/publish/{}", r.name);
        println!("  Watch page:     http://{host}/watch/{}", r.name);
    }
    println!();
}

fn random_key() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    (0..24)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
