//! The HTTP half of WHIP and WHEP as a client: POST an SDP offer, get the
//! answer and the session URL; wait out `409` + `Retry-After` while the room
//! is not live; DELETE a session at the end.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

/// A created WHIP or WHEP session.
#[derive(Debug, Clone)]
pub struct Session {
    pub answer: String,
    /// Absolute URL of the session resource.
    pub url: String,
    /// The WHEP layer extension's URL, when the server offers one.
    pub layer_url: Option<String>,
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build()
}

/// POSTs `offer` to `url` (`/whip/{room}` or `/whep/{room}`), retrying on
/// `409`/`503` with `Retry-After` until `patience` runs out.
pub fn post_offer(
    agent: &ureq::Agent,
    base: &str,
    path: &str,
    bearer: Option<&str>,
    offer: &str,
    patience: Duration,
) -> Result<Session> {
    let url = format!("{base}{path}");
    let deadline = Instant::now() + patience;
    loop {
        let mut req = agent.post(&url).set("Content-Type", "application/sdp");
        if let Some(key) = bearer {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        match req.send_string(offer) {
            Ok(resp) if resp.status() == 201 => {
                let location = resp
                    .header("Location")
                    .ok_or_else(|| anyhow!("{url}: 201 without Location"))?
                    .to_string();
                let layer_url = resp
                    .all("Link")
                    .iter()
                    .flat_map(|h| h.split(','))
                    .find(|l| is_layer_link(l))
                    .and_then(|l| l.split('<').nth(1)?.split('>').next())
                    .map(|u| absolute(base, u));
                let answer = resp.into_string()?;
                return Ok(Session {
                    answer,
                    url: absolute(base, &location),
                    layer_url,
                });
            }
            Ok(resp) => bail!("{url}: unexpected status {}", resp.status()),
            Err(ureq::Error::Status(409 | 503, resp)) if Instant::now() < deadline => {
                // Not live yet, or at capacity: wait as asked, but poll at
                // least every 200 ms so the run starts as the room goes live.
                let wait = resp
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(1.0)
                    .clamp(0.05, 0.2);
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                bail!("{url}: {code} {body}")
            }
            Err(e) => bail!("{url}: {e}"),
        }
    }
}

/// Asks the WHEP layer extension for a rid (`None`: automatic).
pub fn select_layer(agent: &ureq::Agent, layer_url: &str, rid: Option<&str>) -> Result<()> {
    let body = match rid {
        Some(r) => serde_json::json!({ "rid": r }).to_string(),
        None => "{}".to_string(),
    };
    agent
        .post(layer_url)
        .set("Content-Type", "application/json")
        .send_string(&body)
        .map_err(|e| anyhow!("{layer_url}: {e}"))?;
    Ok(())
}

pub fn delete(agent: &ureq::Agent, url: &str) {
    let _ = agent.delete(url).call();
}

/// The WHEP layer extension's link: its relation is
/// `urn:ietf:params:whep:ext:core:layer`, or a server's own URN ending in
/// `:layer` (Dionysia's is `urn:dionysia:whep:layer`).
fn is_layer_link(link: &str) -> bool {
    link.split(';').skip(1).any(|p| {
        p.trim()
            .strip_prefix("rel=")
            .map(|r| r.trim_matches('"'))
            .is_some_and(|r| r.starts_with("urn:") && r.ends_with(":layer"))
    })
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{}{}", base.trim_end_matches('/'), location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_layer_link() {
        assert!(is_layer_link(
            "</whep/r/s/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\""
        ));
        assert!(is_layer_link(
            "</whep/r/s/layer>; rel=\"urn:dionysia:whep:layer\""
        ));
        assert!(!is_layer_link("<stun:x>; rel=\"ice-server\""));
    }
}
