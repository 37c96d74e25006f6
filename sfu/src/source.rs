//! Source media: what an in-process ingest received *before* it transcoded
//! it for WebRTC, offered beside the room's RTP so that another edge can use
//! the original instead of transcoding back.
//!
//! The RTMP shim turns the encoder's AAC into Opus for browsers; the HLS
//! bridge would turn that Opus back into AAC. With a [`SourceRegistry`]
//! shared by both (the binary makes one and hands it to each), the shim
//! registers the encoder's AAC access units under the room while it
//! publishes, and the bridge takes them untouched: no AAC → Opus → AAC
//! round trip, the encoder's sample rate and channels kept.
//!
//! ```text
//!  RTMP connection ─► SourceAudioPublisher::send ─► broadcast ─► hls-bridge room task
//!        │ (registered before publish_internal,       ▲
//!        │  removed when dropped)                     └─ SourceRegistry::audio(room) at TapEvent::Live
//!        └─► AAC → Opus ─► InternalPublisher ─► room (viewers, taps)
//! ```
//!
//! Nothing here touches the media thread: the registry is a map behind a
//! mutex, used once per publish; frames go through a bounded broadcast
//! channel that never blocks the sender (a subscriber that falls behind
//! sees a gap).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::broadcast;

/// Frames a subscriber may fall behind before it loses some (≈ 12 s of
/// 44.1 kHz AAC).
pub const SOURCE_AUDIO_QUEUE: usize = 512;

/// The rooms whose publisher offers its original media.
#[derive(Clone, Default)]
pub struct SourceRegistry {
    audio: Arc<Mutex<HashMap<String, Arc<SourceAudio>>>>,
}

impl std::fmt::Debug for SourceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rooms = self.audio.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("SourceRegistry")
            .field("audio_rooms", &rooms)
            .finish()
    }
}

/// A publisher's original AAC-LC audio.
#[derive(Debug)]
pub struct SourceAudio {
    /// The encoder's AudioSpecificConfig (ISO/IEC 14496-3), as it sent it.
    pub audio_specific_config: Arc<[u8]>,
    /// AAC object type (2 = AAC-LC).
    pub object_type: u8,
    pub sample_rate: u32,
    pub channels: u8,
    frames: broadcast::Sender<SourceAudioFrame>,
}

/// One raw AAC access unit (no ADTS header) of 1024 samples.
#[derive(Debug, Clone)]
pub struct SourceAudioFrame {
    /// Presentation time in milliseconds on the encoder's clock.
    pub pts_ms: u32,
    pub data: Arc<[u8]>,
    /// When the ingest received it: the same clock as [`crate::TapPacket::arrival`],
    /// so a subscriber aligns it with the room's video.
    pub arrival: Instant,
}

impl SourceAudio {
    /// Frames sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SourceAudioFrame> {
        self.frames.subscribe()
    }
}

/// The ingest's handle: sends frames; dropping it withdraws the source.
#[derive(Debug)]
pub struct SourceAudioPublisher {
    registry: SourceRegistry,
    room: String,
    audio: Arc<SourceAudio>,
}

impl SourceAudioPublisher {
    /// Offers one access unit to the room's subscribers (none is fine).
    pub fn send(&self, pts_ms: u32, data: &[u8]) {
        if self.audio.frames.receiver_count() == 0 {
            return; // nobody listens: not even the copy
        }
        let _ = self.audio.frames.send(SourceAudioFrame {
            pts_ms,
            data: Arc::from(data),
            arrival: Instant::now(),
        });
    }
}

impl Drop for SourceAudioPublisher {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .audio
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Only our own entry: a newer publisher of the room may have replaced it.
        if map
            .get(&self.room)
            .is_some_and(|a| Arc::ptr_eq(a, &self.audio))
        {
            map.remove(&self.room);
        }
    }
}

impl SourceRegistry {
    /// Registers `room`'s original audio until the returned handle is
    /// dropped. Call it before the room goes live (before
    /// [`crate::Sfu::publish_internal`]) so that a tap seeing the publish
    /// finds it.
    pub fn publish_audio(
        &self,
        room: &str,
        audio_specific_config: &[u8],
        object_type: u8,
        sample_rate: u32,
        channels: u8,
    ) -> SourceAudioPublisher {
        let (frames, _) = broadcast::channel(SOURCE_AUDIO_QUEUE);
        let audio = Arc::new(SourceAudio {
            audio_specific_config: Arc::from(audio_specific_config),
            object_type,
            sample_rate,
            channels,
            frames,
        });
        self.audio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room.to_owned(), audio.clone());
        SourceAudioPublisher {
            registry: self.clone(),
            room: room.to_owned(),
            audio,
        }
    }

    /// The room's original audio, if its publisher offers one.
    pub fn audio(&self, room: &str) -> Option<Arc<SourceAudio>> {
        self.audio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_lives_as_long_as_its_publisher_and_only_its_own_entry_is_removed() {
        let registry = SourceRegistry::default();
        assert!(registry.audio("r").is_none());
        let first = registry.publish_audio("r", &[0x12, 0x10], 2, 44_100, 2);
        let audio = registry.audio("r").expect("registered");
        assert_eq!((audio.sample_rate, audio.channels), (44_100, 2));
        let mut rx = audio.subscribe();
        first.send(23, &[1, 2, 3]);
        let frame = rx.try_recv().expect("a frame");
        assert_eq!((frame.pts_ms, &frame.data[..]), (23, &[1u8, 2, 3][..]));
        // A newer publisher replaces it; dropping the old one keeps the new.
        let second = registry.publish_audio("r", &[0x11, 0x90], 2, 48_000, 2);
        drop(first);
        assert_eq!(registry.audio("r").map(|a| a.sample_rate), Some(48_000));
        drop(second);
        assert!(registry.audio("r").is_none());
    }
}
