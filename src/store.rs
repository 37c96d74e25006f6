//! Where the durable state lives: rooms (name, stream key, settings), the
//! hashes of admin tokens, server secrets and webhook delivery results.
//! Live state (who is publishing, who watches) is never stored: the SFU
//! holds it in memory.
//!
//! ```text
//!  room API ─┐
//!  CLI ──────┼─► dyn Store ─► SqliteStore (one file in --data-dir, WAL)
//!  WHIP auth ┘                 (a PostgreSQL Store can join for clusters)
//! ```
//!
//! The trait is deliberately small and synchronous: every call is one short
//! indexed statement, so callers on the async side call it directly.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::auth::{constant_time_eq, sha256_hex};

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A room of that name exists already.
    #[error("a room named {0:?} exists already")]
    NameTaken(String),
    /// The database itself failed (disk, corruption, locked too long).
    #[error("database: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// What a room's owner can set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomSettings {
    /// Viewers need a viewer token.
    pub private: bool,
    /// Most WebRTC viewers at once (`None`: only the server's session limit).
    pub max_viewers: Option<u32>,
    /// Serve the room as LL-HLS too.
    pub hls: bool,
    /// Serve the room over WebRTC (WHEP). Off makes the room HLS-only: WHEP
    /// answers `503` with a link to the HLS playlist.
    pub webrtc: bool,
    /// Heights of the transcoded HLS renditions beside the source (empty: source only).
    pub ladder: Vec<u32>,
    /// Keep the current GOP for instant start.
    pub gop_cache: bool,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            private: false,
            max_viewers: None,
            hls: true,
            webrtc: true,
            ladder: hls_bridge::ladder::DEFAULT_HEIGHTS.to_vec(),
            gop_cache: true,
        }
    }
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    pub id: String,
    pub name: String,
    pub stream_key: String,
    pub settings: RoomSettings,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// One attempt to deliver one webhook event to one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: String,
    pub event: String,
    pub room: Option<String>,
    pub url: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why the attempt failed (transport error or non-2xx status).
    pub error: Option<String>,
    pub delivered: bool,
    /// Unix seconds.
    pub at: i64,
}

/// The storage interface. One implementation per engine.
pub trait Store: Send + Sync + 'static {
    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError>;
    fn room_by_name(&self, name: &str) -> Result<Option<StoredRoom>, StoreError>;
    fn room_by_id(&self, id: &str) -> Result<Option<StoredRoom>, StoreError>;
    /// The room whose stream key is `key` (RTMP names its room by key alone):
    /// found through an index of key hashes, confirmed in constant time.
    fn room_by_stream_key(&self, key: &str) -> Result<Option<StoredRoom>, StoreError>;
    fn room_count(&self) -> Result<usize, StoreError>;
    /// `NameTaken` when the name is in use.
    fn insert_room(&self, room: &StoredRoom) -> Result<(), StoreError>;
    /// Writes key, settings and `updated_at` of the room with this id;
    /// whether it existed.
    fn update_room(&self, room: &StoredRoom) -> Result<bool, StoreError>;
    /// Whether it existed.
    fn delete_room(&self, id: &str) -> Result<bool, StoreError>;

    /// SHA-256 hashes (hex) of the stored admin tokens.
    fn admin_token_hashes(&self) -> Result<Vec<String>, StoreError>;
    fn add_admin_token(&self, hash: &str, created_at: i64) -> Result<(), StoreError>;

    /// A server secret by name, stored on first use: returns what is stored.
    fn secret_or_insert(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError>;

    fn record_delivery(&self, d: &Delivery) -> Result<(), StoreError>;
    /// The newest `limit` delivery attempts, newest first.
    fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Whether another process (the CLI) wrote since the last call; the
    /// server then re-reads the rooms to end sessions of re-keyed rooms.
    fn changed_elsewhere(&self) -> Result<bool, StoreError>;
}

/// Delivery attempts kept (older ones are pruned).
const DELIVERIES_KEPT: i64 = 1000;

/// Schema migrations, applied in order; `PRAGMA user_version` counts the
/// applied ones. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: rooms, admin tokens, secrets, webhook deliveries.
    "CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        stream_key TEXT NOT NULL,
        settings TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE admin_tokens (
        hash TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
     );
     CREATE TABLE webhook_deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        event TEXT NOT NULL,
        room TEXT,
        url TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status INTEGER,
        error TEXT,
        delivered INTEGER NOT NULL,
        at INTEGER NOT NULL
     );",
    // 2: rooms are found by stream key (RTMP) through an index of key hashes;
    // `migrate` fills the column of existing rows.
    "ALTER TABLE rooms ADD COLUMN key_hash TEXT;
     CREATE INDEX rooms_key_hash ON rooms (key_hash);",
];

/// The embedded SQLite store: `dionysia.db` in the data directory.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    data_version: Mutex<Option<i64>>,
}

impl SqliteStore {
    /// Opens (creating the directory and file on first start) and migrates.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Backend(format!("creating {}: {e}", data_dir.display())))?;
        let path = data_dir.join("dionysia.db");
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            data_version: Mutex::new(None),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves a usable connection.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Backend(format!(
            "the database is at schema version {version}, newer than this binary's {known}"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    let unhashed: Vec<(String, String)> = tx
        .prepare("SELECT id, stream_key FROM rooms WHERE key_hash IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, key) in unhashed {
        tx.execute(
            "UPDATE rooms SET key_hash = ?2 WHERE id = ?1",
            params![id, sha256_hex(&key)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

const ROOM_COLUMNS: &str = "id, name, stream_key, settings, created_at, updated_at";

fn room_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRoom> {
    let settings: String = row.get(3)?;
    Ok(StoredRoom {
        id: row.get(0)?,
        name: row.get(1)?,
        stream_key: row.get(2)?,
        // Unknown or missing keys take their defaults, so old rows survive
        // new settings.
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
    })
}

fn settings_json(s: &RoomSettings) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "{}".into())
}

impl Store for SqliteStore {
    fn rooms(&self) -> Result<Vec<StoredRoom>, StoreError> {
        let conn = self.conn();
        let mut st =
            conn.prepare_cached(&format!("SELECT {ROOM_COLUMNS} FROM rooms ORDER BY name"))?;
        let rows = st.query_map([], room_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn room_by_name(&self, name: &str) -> Result<Option<StoredRoom>, StoreError> {
        let conn = self.conn();
        let mut st =
            conn.prepare_cached(&format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE name = ?1"))?;
        Ok(st.query_row([name], room_from_row).optional()?)
    }

    fn room_by_id(&self, id: &str) -> Result<Option<StoredRoom>, StoreError> {
        let conn = self.conn();
        let mut st =
            conn.prepare_cached(&format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = ?1"))?;
        Ok(st.query_row([id], room_from_row).optional()?)
    }

    fn room_by_stream_key(&self, key: &str) -> Result<Option<StoredRoom>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {ROOM_COLUMNS} FROM rooms WHERE key_hash = ?1"
        ))?;
        let room = st.query_row([sha256_hex(key)], room_from_row).optional()?;
        Ok(room.filter(|r| constant_time_eq(r.stream_key.as_bytes(), key.as_bytes())))
    }

    fn room_count(&self) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM rooms", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    fn insert_room(&self, room: &StoredRoom) -> Result<(), StoreError> {
        let r = self.conn().execute(
            "INSERT INTO rooms (id, name, stream_key, settings, created_at, updated_at, key_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                room.id,
                room.name,
                room.stream_key,
                settings_json(&room.settings),
                room.created_at,
                room.updated_at,
                sha256_hex(&room.stream_key)
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::NameTaken(room.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn update_room(&self, room: &StoredRoom) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE rooms SET stream_key = ?2, settings = ?3, updated_at = ?4, key_hash = ?5
             WHERE id = ?1",
            params![
                room.id,
                room.stream_key,
                settings_json(&room.settings),
                room.updated_at,
                sha256_hex(&room.stream_key)
            ],
        )?;
        Ok(n > 0)
    }

    fn delete_room(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM rooms WHERE id = ?1", [id])?;
        Ok(n > 0)
    }

    fn admin_token_hashes(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached("SELECT hash FROM admin_tokens")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_admin_token(&self, hash: &str, created_at: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO admin_tokens (hash, created_at) VALUES (?1, ?2)",
            params![hash, created_at],
        )?;
        Ok(())
    }

    fn secret_or_insert(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
            params![name, fresh],
        )?;
        Ok(
            conn.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })?,
        )
    }

    fn record_delivery(&self, d: &Delivery) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO webhook_deliveries
               (event_id, event, room, url, attempt, status, error, delivered, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                d.event_id,
                d.event,
                d.room,
                d.url,
                d.attempt,
                d.status,
                d.error,
                d.delivered,
                d.at
            ],
        )?;
        conn.execute(
            "DELETE FROM webhook_deliveries WHERE seq <= (SELECT MAX(seq) FROM webhook_deliveries) - ?1",
            [DELIVERIES_KEPT],
        )?;
        Ok(())
    }

    fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT event_id, event, room, url, attempt, status, error, delivered, at
             FROM webhook_deliveries ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(Delivery {
                event_id: r.get(0)?,
                event: r.get(1)?,
                room: r.get(2)?,
                url: r.get(3)?,
                attempt: r.get(4)?,
                status: r.get(5)?,
                error: r.get(6)?,
                delivered: r.get(7)?,
                at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn changed_elsewhere(&self) -> Result<bool, StoreError> {
        let now: i64 = self
            .conn()
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        let mut last = self.data_version.lock().unwrap_or_else(|e| e.into_inner());
        let changed = last.is_some_and(|v| v != now);
        *last = Some(now);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "dionysia-store-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn room(id: &str, name: &str) -> StoredRoom {
        StoredRoom {
            id: id.into(),
            name: name.into(),
            stream_key: "key-1234".into(),
            settings: RoomSettings::default(),
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn rooms_round_trip_and_survive_reopening() {
        let dir = temp_dir("rooms");
        {
            let s = SqliteStore::open(&dir).unwrap();
            s.insert_room(&room("rm_1", "a")).unwrap();
            assert!(matches!(
                s.insert_room(&room("rm_2", "a")),
                Err(StoreError::NameTaken(_))
            ));
            let mut r = s.room_by_name("a").unwrap().unwrap();
            r.stream_key = "other-key".into();
            r.settings.private = true;
            r.settings.ladder = vec![720, 360];
            assert!(s.update_room(&r).unwrap());
        }
        let s = SqliteStore::open(&dir).unwrap();
        let r = s.room_by_id("rm_1").unwrap().unwrap();
        assert_eq!(r.stream_key, "other-key");
        assert!(r.settings.private);
        assert_eq!(r.settings.ladder, vec![720, 360]);
        assert_eq!(s.room_count().unwrap(), 1);
        // Found by its current key only.
        assert_eq!(
            s.room_by_stream_key("other-key").unwrap().unwrap().id,
            "rm_1"
        );
        assert!(s.room_by_stream_key("key-1234").unwrap().is_none());
        assert!(s.room_by_stream_key("").unwrap().is_none());
        assert!(s.delete_room("rm_1").unwrap());
        assert!(!s.delete_room("rm_1").unwrap());
        assert!(s.room_by_name("a").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_are_kept_and_other_writers_are_noticed() {
        let dir = temp_dir("secrets");
        let a = SqliteStore::open(&dir).unwrap();
        let b = SqliteStore::open(&dir).unwrap();
        assert_eq!(a.secret_or_insert("k", b"one").unwrap(), b"one");
        assert_eq!(b.secret_or_insert("k", b"two").unwrap(), b"one");
        assert!(!a.changed_elsewhere().unwrap());
        b.insert_room(&room("rm_1", "x")).unwrap();
        assert!(a.changed_elsewhere().unwrap());
        assert!(!a.changed_elsewhere().unwrap());
        a.add_admin_token("abc", 1).unwrap();
        assert_eq!(b.admin_token_hashes().unwrap(), vec!["abc".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
