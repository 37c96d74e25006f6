//! The HTTP guard in front of every authenticated route (`/api/`, `/whip/`,
//! `/whep/`, `/hls/`): it refuses sources with too many failed authentications
//! (`429`), counts each `401` answer against its source, and reports WHIP
//! publishes that were refused as `publisher.rejected` webhooks. Keeping this
//! at the edge leaves the WHIP and WHEP crates free of policy.
//!
//! The source is the TCP peer address: behind a reverse proxy every request
//! comes from the proxy, so the limit then applies to the proxy as a whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::warn;
use wish::Problem;

use crate::auth::FailureLimiter;
use crate::webhooks::Webhooks;

/// The window failed authentications are counted in.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Guard {
    limiter: Arc<FailureLimiter>,
    webhooks: Webhooks,
}

impl Guard {
    /// `limit` failed authentications per source per minute (0: no limit).
    pub fn new(limit: u32, webhooks: Webhooks) -> Guard {
        Guard {
            limiter: Arc::new(FailureLimiter::new(limit, WINDOW)),
            webhooks,
        }
    }
}

impl Guard {
    /// RTMP connections from an address past the limit are closed at
    /// accept, as its HTTP requests get 429: no more guesses over RTMP.
    pub fn rtmp_admission(&self) -> rtmp::AdmissionHook {
        let g = self.clone();
        rtmp::AdmissionHook(Arc::new(move |ip| {
            g.limiter.blocked(ip, Instant::now()).is_none()
        }))
    }

    /// The RTMP ingest's refusals, counted as this guard counts HTTP ones:
    /// an unknown stream key is a failed authentication of its source, and
    /// a source past the limit raises no more `publisher.rejected` webhooks
    /// (each would be up to five deliveries, stored).
    pub fn rtmp_rejections(&self) -> rtmp::RejectionHook {
        let g = self.clone();
        rtmp::RejectionHook(Arc::new(move |r: rtmp::Rejection| {
            let now = Instant::now();
            if g.limiter.blocked(r.remote_ip, now).is_some() {
                return;
            }
            if r.room.is_none() {
                g.limiter.record_failure(r.remote_ip, now);
            }
            g.webhooks.emit(
                "publisher.rejected",
                r.room.as_deref().unwrap_or(""),
                json!({"reason": r.reason, "ingest": "rtmp", "remote_ip": r.remote_ip.to_string()}),
            );
        }))
    }
}

pub async fn guard(State(g): State<Guard>, request: Request<Body>, next: Next) -> Response {
    let path = request.uri().path();
    let guarded = ["/api/", "/whip/", "/whep/", "/hls/", "/metrics"]
        .iter()
        .any(|p| path.starts_with(p));
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (Some(ip), true) = (source, guarded) else {
        return next.run(request).await;
    };
    if let Some(wait) = g.limiter.blocked(ip, Instant::now()) {
        let secs = u32::try_from(wait).unwrap_or(u32::MAX);
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-failures",
            "too many failed authentications from this address; try again later",
        )
        .retry_after(secs)
        .into_response();
    }
    // A WHIP publish is `POST /whip/{room}` (one segment after /whip/).
    let publish_room = (request.method() == Method::POST)
        .then(|| path.strip_prefix("/whip/"))
        .flatten()
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .map(str::to_string);
    let response = next.run(request).await;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        g.limiter.record_failure(ip, Instant::now());
    }
    if let Some(room) = publish_room {
        let reason = match status {
            StatusCode::UNAUTHORIZED => Some("unauthorized"),
            StatusCode::CONFLICT => Some("publisher-exists"),
            _ => None,
        };
        if let Some(reason) = reason {
            warn!(room, reason, %ip, "publish refused");
            g.webhooks.emit(
                "publisher.rejected",
                &room,
                json!({"reason": reason, "ingest": "whip", "remote_ip": ip.to_string()}),
            );
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_rtmp_stream_keys_count_as_failed_authentications() {
        let guard = Guard::new(2, Webhooks::disabled());
        let hook = guard.rtmp_rejections();
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let rejection = |room: Option<&str>| rtmp::Rejection {
            room: room.map(str::to_string),
            reason: "",
            remote_ip: ip,
        };
        // A key that names a live room is no failed authentication.
        (hook.0)(rejection(Some("busy")));
        (hook.0)(rejection(Some("busy")));
        assert!(guard.limiter.blocked(ip, Instant::now()).is_none());
        (hook.0)(rejection(None));
        (hook.0)(rejection(None));
        assert!(guard.limiter.blocked(ip, Instant::now()).is_some());
    }
}
