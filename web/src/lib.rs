//! Dionysia's browser pages, embedded in the binary.
//!
//! ```text
//!  GET /                  dashboard: rooms, live state, viewers (room API, admin token)
//!  GET /publish/{room}    camera/screen + mic ─► WHIP  POST /whip/{room}
//!  GET /watch/{room}      <dionysia-player>: WHEP, falling back to LL-HLS
//!  GET /assets/{file}     the ES modules and stylesheets the pages load
//!  GET /assets/hls.js     hls.js (ES module), loaded by the player only to fall back
//! ```
//!
//! Every file is compiled in from `web/assets/` (`include_str!`), so the
//! binary serves its pages with nothing beside it. The pages are static: the
//! room comes from the URL path in the browser, never from templating, so no
//! request data is ever written into HTML here. The JavaScript is plain ES
//! modules (no CDN, no bundler, no framework): `whip.js` and `whep.js` are
//! small WHIP/WHEP clients that other pages and the end-to-end tests reuse;
//! `player.js` defines the `<dionysia-player>` element, embeddable from any
//! site (assets answer with `Access-Control-Allow-Origin: *`, as module
//! scripts are fetched with CORS).
//!
//! The one third-party file, hls.js (Apache-2.0), is not in the repository:
//! `build.rs` takes it from `web/node_modules` or from the npm tarball pinned
//! (with its sha512) by `web/package-lock.json`. An offline build embeds
//! nothing, and `/assets/hls.js` answers `404` (the player then uses native
//! HLS where the browser has it).
//!
//! This crate never touches media or the SFU: it only answers GETs.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};

/// One embedded file, as it is and gzipped (by `build.rs`).
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    gzipped: &'static [u8],
}

/// `asset!("player.js", JS)`: `web/assets/player.js` and its gzipped copy.
macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("../assets/", $name)),
            gzipped: include_bytes!(concat!(env!("OUT_DIR"), "/gz/", $name, ".gz")),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// What `/assets/{file}` serves.
const ASSETS: &[Asset] = &[
    asset!("wish.js", JS),
    asset!("whip.js", JS),
    asset!("whep.js", JS),
    asset!("page.js", JS),
    asset!("dashboard.js", JS),
    asset!("player.js", JS),
    asset!("player.css", CSS),
    asset!("publish.js", JS),
    asset!("watch.js", JS),
    asset!("style.css", CSS),
    asset!("icon.svg", SVG),
];

/// hls.js 1.7.4 (`dist/hls.min.mjs`), plain and gzipped; empty when the
/// build could not get it (see `build.rs`).
const HLS_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hls.min.mjs"));
const HLS_JS_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hls.min.mjs.gz"));

const INDEX_HTML: &str = include_str!("../assets/index.html");
const PUBLISH_HTML: &str = include_str!("../assets/publish.html");
const WATCH_HTML: &str = include_str!("../assets/watch.html");

/// The pages only load their own modules and talk to their own origin.
/// `media-src` allows the MediaStreams the pages attach to `<video>`.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; media-src 'self' blob: mediastream:; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The routes of the pages and their assets; merged into the server's router.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML) }))
        .route("/publish/{room}", get(|| async { page(PUBLISH_HTML) }))
        .route("/watch/{room}", get(|| async { page(WATCH_HTML) }))
        .route("/assets/hls.js", get(serve_hls_js))
        .route("/assets/{file}", get(serve_asset))
}

fn page(html: &'static str) -> Response {
    let mut response = file_response(HTML, html);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn serve_asset(Path(file): Path<String>, headers: http::HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == file) else {
        return not_found();
    };
    if !accepts_gzip(&headers) {
        return file_response(a.content_type, a.body);
    }
    let mut response = file_response(a.content_type, "");
    *response.body_mut() = axum::body::Body::from(a.gzipped);
    let h = response.headers_mut();
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

fn file_response(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate each time: the files change with the binary, and
            // they are small.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The player is embeddable from any origin (module scripts are
            // fetched with CORS); nothing here is private.
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

/// hls.js, gzipped when the client takes it (about a third of the size).
/// Cached for a week: it changes only with the pinned version.
async fn serve_hls_js(headers: http::HeaderMap) -> Response {
    if HLS_JS.is_empty() {
        return not_found();
    }
    let gzip = accepts_gzip(&headers);
    let mut response = (
        [
            (header::CONTENT_TYPE, JS),
            (header::CACHE_CONTROL, "public, max-age=604800"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::VARY, "Accept-Encoding"),
        ],
        if gzip { HLS_JS_GZ } else { HLS_JS },
    )
        .into_response();
    if gzip {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// An RFC 9457 problem, as every other Dionysia endpoint answers errors.
fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/problem+json")],
        r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no such asset"}"#,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use http::Request;
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, http::HeaderMap, String) {
        let response = router()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn pages_are_html_with_a_csp() {
        for (path, marker) in [
            ("/", "/assets/dashboard.js"),
            ("/publish/main", "/assets/publish.js"),
            ("/watch/some%20room", "/assets/watch.js"),
        ] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], HTML, "{path}");
            assert!(
                headers.contains_key(header::CONTENT_SECURITY_POLICY),
                "{path}"
            );
            assert!(body.contains(marker), "{path} lacks {marker}");
        }
    }

    #[tokio::test]
    async fn assets_have_their_types_and_unknown_ones_are_404() {
        let (status, headers, body) = get("/assets/whep.js").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], JS);
        assert!(body.contains("export class WhepViewer"));
        let (status, headers, _) = get("/assets/style.css").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], CSS);
        let (status, headers, _) = get("/assets/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let (status, _, _) = get("/assets/..%2Fsrc%2Flib.rs").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// Every `/assets/x` a page names and every `./x.js` a module imports is
    /// one we serve: a file added to `assets/` but not to `ASSETS` fails here.
    #[test]
    fn every_referenced_file_is_served() {
        let mut texts: Vec<&str> = vec![INDEX_HTML, PUBLISH_HTML, WATCH_HTML];
        texts.extend(ASSETS.iter().map(|a| a.body));
        let served = |name: &str| ASSETS.iter().any(|a| a.name == name);
        let mut checked = 0;
        for text in texts {
            for (prefix, end) in [("/assets/", '"'), ("from './", '\'')] {
                for (i, _) in text.match_indices(prefix) {
                    let rest = &text[i + prefix.len()..];
                    let Some(name) = rest.split(end).next() else {
                        continue;
                    };
                    // Skip prose such as "/assets/..." in comments.
                    if [".js", ".css", ".svg"]
                        .iter()
                        .any(|ext| name.ends_with(ext))
                    {
                        assert!(served(name), "{name} is referenced but not served");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 10, "found only {checked} references");
    }

    #[tokio::test]
    async fn assets_are_gzipped_for_clients_that_accept_it() {
        let request = Request::get("/assets/player.js")
            .header(header::ACCEPT_ENCODING, "gzip, deflate")
            .body(Body::empty())
            .unwrap();
        let response = router().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(response.headers()[header::VARY], "Accept-Encoding");
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let player = ASSETS.iter().find(|a| a.name == "player.js").unwrap();
        assert!(body.len() < player.body.len() / 2, "{} bytes", body.len());
        assert_eq!(&body[..2], &[0x1f, 0x8b], "not gzip");
        // Without Accept-Encoding: as it is.
        let (_, headers, body) = get("/assets/player.js").await;
        assert!(!headers.contains_key(header::CONTENT_ENCODING));
        assert_eq!(body, player.body);
    }

    #[tokio::test]
    async fn assets_allow_any_origin() {
        let (_, headers, _) = get("/assets/player.js").await;
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    /// The build embeds hls.js (from node_modules or the pinned tarball);
    /// served gzipped to clients that take it, with a long cache lifetime.
    #[tokio::test]
    async fn hls_js_is_embedded_and_served_gzipped() {
        assert!(
            HLS_JS.len() > 100_000,
            "hls.js was not embedded: run `npm ci` in web/ or build online"
        );
        let request = Request::get("/assets/hls.js")
            .header(header::ACCEPT_ENCODING, "br, gzip")
            .body(Body::empty())
            .unwrap();
        let response = router().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(response.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age=604800"));
        let body = to_bytes(response.into_body(), 4 << 20).await.unwrap();
        assert_eq!(&body[..], HLS_JS_GZ);
        let (status, headers, body) = get("/assets/hls.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(!headers.contains_key(header::CONTENT_ENCODING));
        assert!(body.contains("export"), "not an ES module");
    }
}
