//! What happens to the database before the server starts (config rooms,
//! the demo room, the first admin token, the viewer-token key), and the
//! operator's subcommands, which work on the same database — also while a
//! server runs on it: SQLite in WAL mode serves both, and the server notices
//! a key rotated or a room deleted here within a second.

use anyhow::{bail, Context};

use crate::auth::{new_admin_token, new_stream_key, random_bytes, sha256_hex, unix_now};
use crate::config::{validate_room_name, AdminTokenCommand, Command, Config, RoomCommand};
use crate::rooms::{new_room, validate_settings, MAX_ROOMS};
use crate::store::{RoomSettings, SqliteStore, Store};

/// What [`prepare`] did, for the banner.
pub struct Setup {
    /// A generated admin token, to print once.
    pub new_admin_token: Option<String>,
    /// The name of a demo room created because no room existed.
    pub new_demo_room: Option<String>,
    /// The key viewer tokens are signed with.
    pub viewer_token_key: Vec<u8>,
}

const VIEWER_TOKEN_KEY: &str = "viewer_token_key";

/// Brings the database in line with the config before serving: rooms from
/// `--room` / `[[rooms]]` are created or get the configured key; with no
/// room at all a `demo` room is created; with no admin token configured or
/// stored, one is generated.
pub fn prepare(config: &Config, store: &dyn Store) -> anyhow::Result<Setup> {
    for r in &config.rooms {
        match store.room_by_name(&r.name)? {
            Some(mut existing) => {
                if existing.stream_key != r.stream_key {
                    existing.stream_key = r.stream_key.clone();
                    existing.updated_at = unix_now();
                    store.update_room(&existing)?;
                }
            }
            None => {
                let mut room = new_room(&r.name, RoomSettings::default());
                room.stream_key = r.stream_key.clone();
                store.insert_room(&room)?;
            }
        }
    }
    let mut new_demo_room = None;
    if store.room_count()? == 0 {
        store.insert_room(&new_room("demo", RoomSettings::default()))?;
        new_demo_room = Some("demo".to_string());
    }
    let mut generated_token = None;
    if config.admin_tokens.is_empty() && store.admin_token_hashes()?.is_empty() {
        let token = new_admin_token();
        store.add_admin_token(&sha256_hex(&token), unix_now())?;
        generated_token = Some(token);
    }
    let viewer_token_key = store.secret_or_insert(VIEWER_TOKEN_KEY, &random_bytes::<32>())?;
    Ok(Setup {
        new_admin_token: generated_token,
        new_demo_room,
        viewer_token_key,
    })
}

/// Runs a subcommand against the database in the data directory.
pub fn run(command: Command, config: &Config) -> anyhow::Result<()> {
    let store = SqliteStore::open(&config.data_dir)
        .with_context(|| format!("opening the database in {}", config.data_dir.display()))?;
    let base = config.public_url.clone().unwrap_or_else(|| {
        let port = config.http_listen.port();
        format!("http://localhost:{port}")
    });
    match command {
        Command::Room(RoomCommand::Create(c)) => {
            validate_room_name(&c.name)?;
            let settings = RoomSettings {
                private: c.private,
                max_viewers: c.max_viewers,
                ..RoomSettings::default()
            };
            validate_settings(&settings).map_err(anyhow::Error::msg)?;
            if store.room_count()? >= MAX_ROOMS {
                bail!("this server has its maximum of {MAX_ROOMS} rooms");
            }
            let room = new_room(&c.name, settings);
            store.insert_room(&room)?;
            println!("Room {:?} created (id {})", room.name, room.id);
            println!("  Stream key:     {}", room.stream_key);
            println!("  WHIP (publish): {base}/whip/{}", room.name);
            println!("  WHEP (watch):   {base}/whep/{}", room.name);
            println!("  Watch page:     {base}/watch/{}", room.name);
            if room.settings.private {
                println!(
                    "  Private: viewers need a token (POST /api/v1/rooms/{}/viewer-tokens)",
                    room.id
                );
            }
        }
        Command::Room(RoomCommand::List { show_keys }) => {
            let rooms = store.rooms()?;
            if rooms.is_empty() {
                println!("no rooms");
            }
            for r in rooms {
                let mut line = format!("{:<24} {}", r.name, r.id);
                if r.settings.private {
                    line.push_str("  private");
                }
                if show_keys {
                    line.push_str(&format!("  key={}", r.stream_key));
                }
                println!("{line}");
            }
        }
        Command::Room(RoomCommand::RotateKey { name }) => {
            let Some(mut room) = store.room_by_name(&name)? else {
                bail!("no room named {name:?}");
            };
            room.stream_key = new_stream_key();
            room.updated_at = unix_now();
            store.update_room(&room)?;
            println!("Room {:?}: new stream key {}", room.name, room.stream_key);
            println!("  The old key no longer works; a running server ends its live publish within a second.");
        }
        Command::Room(RoomCommand::Delete { name }) => {
            let Some(room) = store.room_by_name(&name)? else {
                bail!("no room named {name:?}");
            };
            store.delete_room(&room.id)?;
            println!("Room {:?} deleted", room.name);
        }
        Command::AdminToken(AdminTokenCommand::Create) => {
            let token = new_admin_token();
            store.add_admin_token(&sha256_hex(&token), unix_now())?;
            println!("New admin API token (shown only this once):");
            println!("  {token}");
        }
    }
    Ok(())
}
