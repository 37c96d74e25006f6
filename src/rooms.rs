//! The rooms this server serves and their stream keys, from the config.
//! (The room API with its database replaces this.)

use std::collections::HashMap;

use wish::RoomDirectory;

pub struct ConfiguredRooms {
    keys: HashMap<String, String>,
}

impl ConfiguredRooms {
    pub fn new(rooms: impl IntoIterator<Item = (String, String)>) -> Self {
        ConfiguredRooms {
            keys: rooms.into_iter().collect(),
        }
    }
}

impl RoomDirectory for ConfiguredRooms {
    fn room_exists(&self, room: &str) -> bool {
        self.keys.contains_key(room)
    }

    fn stream_key_matches(&self, room: &str, key: &str) -> bool {
        self.keys
            .get(room)
            .is_some_and(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
    }
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed key was right (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let r = ConfiguredRooms::new([("a".to_string(), "secret".to_string())]);
        assert!(r.room_exists("a") && !r.room_exists("b"));
        assert!(r.stream_key_matches("a", "secret"));
        assert!(!r.stream_key_matches("a", "secreT"));
        assert!(!r.stream_key_matches("a", "secret2"));
        assert!(!r.stream_key_matches("b", "secret"));
    }
}
