//! Credentials: random secrets, admin tokens (only their SHA-256 is
//! stored), signed viewer tokens for private rooms, and the per-source
//! limit on failed authentications.
//!
//! Viewer tokens are JWTs (RFC 7519) signed with HS256 by a key generated on
//! first start and kept in the database; their claims name the room by name
//! and id, so a token dies with its room even if the name is reused.
//! Secrets are compared in constant time and never logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Unambiguous characters for keys people copy by hand.
const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Cryptographically random bytes (the OS generator).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS generator does not fail on supported platforms; if it ever
    // did, refusing to mint a guessable secret is the only safe outcome.
    getrandom::fill(&mut b).expect("the OS random generator failed");
    b
}

/// `len` random characters of [`ALPHABET`], unbiased (rejection sampling).
pub fn random_string(len: usize) -> String {
    let limit = 256 - 256 % ALPHABET.len();
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<32>() {
            if (b as usize) < limit && out.len() < len {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// A new stream key (24 characters, ~139 bits).
pub fn new_stream_key() -> String {
    random_string(24)
}

/// A new admin token (`dadm_` + 40 characters).
pub fn new_admin_token() -> String {
    format!("dadm_{}", random_string(40))
}

/// A new room id.
pub fn new_room_id() -> String {
    format!("rm_{}", random_string(16))
}

pub fn sha256_hex(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed secret was right (the length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// HMAC-SHA256 of `message`, lowercase hex (the webhook signature).
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ------------------------------------------------------------ viewer tokens

/// What a viewer token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewerClaims {
    /// The room's name (as in `/whep/{room}`).
    pub room: String,
    /// The room's id: a deleted and re-created room does not honour old tokens.
    pub room_id: String,
    /// Issued at, expires at: Unix seconds.
    pub iat: i64,
    pub exp: i64,
}

/// Why a viewer token was refused (the HTTP answer is `401` either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

/// Signs and checks viewer tokens with the server's key.
pub struct ViewerTokenKey {
    key: Vec<u8>,
}

impl ViewerTokenKey {
    pub fn new(key: Vec<u8>) -> Self {
        ViewerTokenKey { key }
    }

    pub fn sign(&self, claims: &ViewerClaims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// The claims of a well-signed, unexpired token (at `now`, Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<ViewerClaims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        // Only HS256: never let the token choose its algorithm.
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: ViewerClaims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

// ------------------------------------------------------- failed-auth limit

/// Counts failed authentications per source in a fixed window; past the
/// limit the source is refused (`429`) until the window ends. A source is
/// an IPv4 address (also when mapped into IPv6) or an IPv6 /64
/// (`rtmp::source_key`).
pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    sources: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Sources tracked before expired entries are swept.
const SWEEP_AT: usize = 10_000;

impl FailureLimiter {
    /// `limit` failures per `window`; 0 disables the limit.
    pub fn new(limit: u32, window: Duration) -> Self {
        FailureLimiter {
            limit,
            window,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `ip` may try again, if it is blocked now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        if self.limit == 0 {
            return None;
        }
        let ip = rtmp::source_key(ip);
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let (start, n) = sources.get(&ip)?;
        let left = self.window.checked_sub(now.duration_since(*start))?;
        (*n >= self.limit).then(|| left.as_secs().max(1))
    }

    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let ip = rtmp::source_key(ip);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() >= SWEEP_AT {
            let window = self.window;
            sources.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = sources.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_strings_use_the_alphabet() {
        let s = random_string(100);
        assert_eq!(s.len(), 100);
        assert!(s.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(new_stream_key(), new_stream_key());
        assert!(new_admin_token().starts_with("dadm_"));
    }

    #[test]
    fn viewer_tokens_verify_expire_and_resist_tampering() {
        let k = ViewerTokenKey::new(b"0123456789abcdef0123456789abcdef".to_vec());
        let claims = ViewerClaims {
            room: "show".into(),
            room_id: "rm_1".into(),
            iat: 100,
            exp: 200,
        };
        let t = k.sign(&claims);
        assert_eq!(k.verify(&t, 150), Ok(claims.clone()));
        assert_eq!(k.verify(&t, 200), Err(TokenError::Expired));
        let other = ViewerTokenKey::new(b"another key".to_vec());
        assert_eq!(other.verify(&t, 150), Err(TokenError::BadSignature));
        // A payload swapped for another room's keeps the old signature: refused.
        let forged_claims = ViewerClaims {
            room: "other".into(),
            ..claims
        };
        let forged = k.sign(&forged_claims);
        let mut parts: Vec<&str> = t.split('.').collect();
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_eq!(
            k.verify(&parts.join("."), 150),
            Err(TokenError::BadSignature)
        );
        // alg=none is refused outright.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            t.split('.').nth(1).unwrap()
        );
        assert_eq!(k.verify(&none, 150), Err(TokenError::Malformed));
        assert_eq!(k.verify("garbage", 150), Err(TokenError::Malformed));
    }

    #[test]
    fn limiter_blocks_after_the_limit_until_the_window_ends() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..2 {
            l.record_failure(ip, t0);
        }
        assert_eq!(l.blocked(ip, t0), None);
        l.record_failure(ip, t0);
        assert_eq!(l.blocked(ip, t0 + Duration::from_secs(10)), Some(50));
        assert_eq!(l.blocked(ip, t0 + Duration::from_secs(61)), None);
        assert_eq!(l.blocked("192.0.2.2".parse().unwrap(), t0), None);
        let off = FailureLimiter::new(0, Duration::from_secs(60));
        off.record_failure(ip, t0);
        assert_eq!(off.blocked(ip, t0), None);
    }

    #[test]
    fn limiter_counts_an_ipv6_64_and_a_mapped_ipv4_as_one_source() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Rotating addresses inside one /64 gains nothing.
        l.record_failure(ip("2001:db8::1"), t0);
        l.record_failure(ip("2001:db8::ffff:2"), t0);
        assert!(l.blocked(ip("2001:db8::3"), t0).is_some());
        assert!(l.blocked(ip("2001:db8:0:1::3"), t0).is_none());
        // Failures over HTTP (IPv4) block the same host on a dual-stack
        // listener, where it shows as ::ffff:a.b.c.d.
        l.record_failure(ip("192.0.2.1"), t0);
        l.record_failure(ip("192.0.2.1"), t0);
        assert!(l.blocked(ip("::ffff:192.0.2.1"), t0).is_some());
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
