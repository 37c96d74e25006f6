//! HTTP conformance of the WHIP endpoint (RFC 9725) and the WHEP endpoint
//! (draft-ietf-wish-whep), driven against the real `dionysia` binary.
//!
//! No media flows here: a POST with a valid offer creates a session even though
//! ICE never connects, and that is all the HTTP layer needs. Each test's doc
//! comment names the sections it checks ("W" = RFC 9725, "E" =
//! draft-ietf-wish-whep) or says when a rule is our own contract rather than
//! the protocol's.
//!
//! ```text
//!  reqwest ──POST/PATCH/DELETE/OPTIONS──► dionysia (--room studio:KEY ...)
//!     ▲                                         │
//!     └──── status, headers, SDP / sdpfrag / problem+json ◄┘
//! ```

mod common;

use common::{repo_root, Server};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::HeaderMap;
use reqwest::redirect::Policy;
use reqwest::Method;
use std::time::Duration;

const ROOM: &str = "studio";
const KEY: &str = "studio-key-4f9a2c";
const OTHER_ROOM: &str = "backstage";
const OTHER_KEY: &str = "backstage-key-77e1";
const STUN: &str = "stun:stun.example.net:3478";
const TURN: &str = "turn:turn.example.net:3478?transport=udp";
const TURN_USER: &str = "alice";
const TURN_CREDENTIAL: &str = "s3cr3t-turn";
const ORIGIN: &str = "https://player.example.com";

const SDP: &str = "application/sdp";
const FRAG: &str = "application/trickle-ice-sdpfrag";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn rooms() -> Vec<String> {
    vec![
        "--room".into(),
        format!("{ROOM}:{KEY}"),
        "--room".into(),
        format!("{OTHER_ROOM}:{OTHER_KEY}"),
    ]
}

/// Two rooms, no ICE servers configured.
fn start() -> Server {
    let args = rooms();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// Two rooms plus one STUN and one TURN server to advertise.
fn start_with_ice_servers() -> Server {
    let mut args = rooms();
    args.extend([
        "--ice-server".into(),
        STUN.into(),
        "--ice-server".into(),
        format!("{TURN}|{TURN_USER}|{TURN_CREDENTIAL}"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(15))
        .redirect(Policy::none())
        .build()
        .expect("reqwest client")
}

/// An SDP fixture as a client would send it: CRLF line ends.
fn fixture(name: &str) -> String {
    let path = repo_root().join("tests/fixtures").join(name);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.lines().map(|l| format!("{l}\r\n")).collect()
}

/// A finished HTTP exchange, with everything a test asserts on.
struct Reply {
    what: String,
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    fn headers_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// Everything about the reply, for assertion messages.
    fn dump(&self) -> String {
        let mut s = format!("{} -> {}\n", self.what, self.status);
        for (k, v) in &self.headers {
            s += &format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes()));
        }
        s + "\n" + &self.body
    }

    fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "expected {status}, got:\n{}",
            self.dump()
        );
        self
    }
}

fn send(what: impl Into<String>, rb: RequestBuilder) -> Reply {
    let what = what.into();
    let resp = rb.send().unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().unwrap_or_default();
    Reply {
        what,
        status,
        headers,
        body,
    }
}

/// `POST /{kind}/{room}` with the given credentials and content type.
fn post(
    server: &Server,
    kind: &str,
    room: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: String,
) -> Reply {
    let url = server.url(&format!("/{kind}/{room}"));
    let mut rb = client().post(&url).header("Origin", ORIGIN).body(body);
    if let Some(key) = key {
        rb = rb.header("Authorization", format!("Bearer {key}"));
    }
    if let Some(ct) = content_type {
        rb = rb.header("Content-Type", ct);
    }
    send(format!("POST {url}"), rb)
}

/// A session created by a 201.
struct Session {
    /// Absolute URL of the session resource.
    url: String,
    /// The Location value as sent.
    location: String,
    etag: String,
    answer: String,
    offer: String,
    reply: Reply,
}

/// Resolves a Location the way OBS does: absolute URLs as they are, otherwise
/// an absolute path on the endpoint's origin (OBS cannot use other relative
/// references: it puts the value in the URL's path).
fn resolve(server: &Server, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        assert!(
            location.starts_with('/'),
            "Location must be an absolute URL or absolute path, got {location:?}"
        );
        server.url(location)
    }
}

fn is_strong_etag(etag: &str) -> bool {
    etag.len() >= 3
        && etag.starts_with('"')
        && etag.ends_with('"')
        && !etag[1..etag.len() - 1].contains('"')
}

/// Checks the 201 of a POST (W 4.2, E 4.3.1) and returns the session.
fn created(server: &Server, kind: &str, room: &str, offer: String, reply: Reply) -> Session {
    reply.expect(201);
    let ct = reply.header("content-type").unwrap_or_default();
    assert!(
        ct.to_ascii_lowercase().starts_with(SDP),
        "201 Content-Type must be application/sdp:\n{}",
        reply.dump()
    );
    let location = reply
        .header("location")
        .unwrap_or_else(|| panic!("201 without Location (W 4.2):\n{}", reply.dump()));
    let url = resolve(server, &location);
    let prefix = server.url(&format!("/{kind}/{room}/"));
    assert!(
        url.starts_with(&prefix),
        "Location {location:?} is not under /{kind}/{room}/"
    );
    let etag = reply.header("etag").unwrap_or_else(|| {
        panic!(
            "201 without ETag (W 4.3.1: MUST when ICE restarts are supported):\n{}",
            reply.dump()
        )
    });
    assert!(
        is_strong_etag(&etag),
        "ETag must be a strong entity-tag, got {etag:?}"
    );
    let answer = reply.body.clone();
    Session {
        url,
        location,
        etag,
        answer,
        offer,
        reply,
    }
}

fn publish(server: &Server, room: &str, key: &str, fixture_name: &str) -> Session {
    let offer = fixture(fixture_name);
    let reply = post(server, "whip", room, Some(key), Some(SDP), offer.clone());
    created(server, "whip", room, offer, reply)
}

fn subscribe(server: &Server, room: &str) -> Session {
    let offer = fixture("chromium_recvonly_whep_offer.sdp");
    let reply = post(server, "whep", room, None, Some(SDP), offer.clone());
    created(server, "whep", room, offer, reply)
}

fn patch(
    session_url: &str,
    key: Option<&str>,
    if_match: Option<&str>,
    content_type: &str,
    body: String,
) -> Reply {
    let mut rb = client()
        .patch(session_url)
        .header("Content-Type", content_type)
        .body(body);
    if let Some(key) = key {
        rb = rb.header("Authorization", format!("Bearer {key}"));
    }
    if let Some(m) = if_match {
        rb = rb.header("If-Match", m);
    }
    send(format!("PATCH {session_url} (If-Match: {if_match:?})"), rb)
}

fn delete(session_url: &str, key: Option<&str>) -> Reply {
    let mut rb = client().delete(session_url);
    if let Some(key) = key {
        rb = rb.header("Authorization", format!("Bearer {key}"));
    }
    send(format!("DELETE {session_url}"), rb)
}

fn options(url: &str, extra: &[(&str, &str)]) -> Reply {
    let mut rb = client().request(Method::OPTIONS, url);
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    send(format!("OPTIONS {url} {extra:?}"), rb)
}

/// W 4.2 speaks of "the 200 OK response to any OPTIONS request"; Fetch accepts
/// any 2xx for a preflight, and 204 carries the same headers, so both pass.
fn expect_options_ok(reply: &Reply) {
    assert!(
        reply.status == 200 || reply.status == 204,
        "OPTIONS must succeed (200 OK, W 4.2):\n{}",
        reply.dump()
    );
}

/// Checks an RFC 9457 problem body and returns it.
fn assert_problem(reply: &Reply, status: u16) -> serde_json::Value {
    reply.expect(status);
    let ct = reply.header("content-type").unwrap_or_default();
    assert!(
        ct.to_ascii_lowercase()
            .starts_with("application/problem+json"),
        "error must carry application/problem+json (RFC 9457), got {ct:?}:\n{}",
        reply.dump()
    );
    let v: serde_json::Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("problem body is not JSON ({e}):\n{}", reply.dump()));
    assert_eq!(
        v["status"].as_u64(),
        Some(status as u64),
        "problem.status:\n{}",
        reply.dump()
    );
    for field in ["type", "title", "detail"] {
        assert!(
            v[field].as_str().is_some_and(|s| !s.is_empty()),
            "problem.{field} missing or empty:\n{}",
            reply.dump()
        );
    }
    v
}

fn assert_problem_one_of(reply: &Reply, statuses: &[u16]) -> serde_json::Value {
    assert!(
        statuses.contains(&reply.status),
        "expected one of {statuses:?}:\n{}",
        reply.dump()
    );
    assert_problem(reply, reply.status)
}

/// True when a comma-separated header value lists `token` (case-insensitive).
fn lists(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// CORS on an actual (non-preflight) response: the browser must be allowed to
/// read it, and the WHIP headers must be exposed to script.
fn assert_cors_exposes(reply: &Reply, names: &[&str]) {
    let acao = reply
        .header("access-control-allow-origin")
        .unwrap_or_else(|| {
            panic!(
                "no Access-Control-Allow-Origin on a response to an Origin request:\n{}",
                reply.dump()
            )
        });
    assert!(
        acao == "*" || acao == ORIGIN,
        "Access-Control-Allow-Origin {acao:?}"
    );
    if names.is_empty() {
        return;
    }
    let aceh = reply
        .header("access-control-expose-headers")
        .unwrap_or_else(|| {
            panic!(
                "no Access-Control-Expose-Headers (scripts cannot read Location/ETag/Link):\n{}",
                reply.dump()
            )
        });
    for name in names {
        assert!(
            aceh.trim() == "*" || lists(&aceh, name),
            "Access-Control-Expose-Headers {aceh:?} lacks {name}"
        );
    }
}

// ---------------------------------------------------------------------------
// SDP helpers
// ---------------------------------------------------------------------------

fn assert_crlf(what: &str, text: &str) {
    assert!(!text.is_empty(), "{what} is empty");
    let bare_lf = text
        .match_indices('\n')
        .any(|(i, _)| i == 0 || text.as_bytes()[i - 1] != b'\r');
    assert!(
        !bare_lf && text.ends_with("\r\n"),
        "{what} must use CRLF line ends (RFC 8866; OBS parses up to \\r\\n):\n{text}"
    );
}

fn sdp_lines(text: &str) -> Vec<&str> {
    text.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Session-level lines and the media sections (each starting at its m= line).
fn split_sdp(text: &str) -> (Vec<&str>, Vec<Vec<&str>>) {
    let mut session = Vec::new();
    let mut media: Vec<Vec<&str>> = Vec::new();
    for line in sdp_lines(text) {
        if line.starts_with("m=") {
            media.push(vec![line]);
        } else if let Some(m) = media.last_mut() {
            m.push(line);
        } else {
            session.push(line);
        }
    }
    (session, media)
}

/// The value of the first `a=name:value` (or `Some("")` for a flag `a=name`).
fn attr<'a>(lines: &[&'a str], name: &str) -> Option<&'a str> {
    let full = format!("a={name}");
    lines.iter().find_map(|l| {
        if *l == full {
            Some("")
        } else {
            l.strip_prefix(&full).and_then(|r| r.strip_prefix(':'))
        }
    })
}

fn attrs<'a>(lines: &[&'a str], name: &str) -> Vec<&'a str> {
    let full = format!("a={name}:");
    lines.iter().filter_map(|l| l.strip_prefix(&full)).collect()
}

fn m_kind<'a>(section: &[&'a str]) -> &'a str {
    section[0]
        .trim_start_matches("m=")
        .split(' ')
        .next()
        .unwrap_or("")
}

fn m_port(section: &[&str]) -> u32 {
    section[0]
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn m_payload_types<'a>(section: &[&'a str]) -> Vec<&'a str> {
    section[0].split(' ').skip(3).collect()
}

/// `a=rtpmap:PT name/clock[/ch]` → `name/clock` in lower case.
fn rtpmap(section: &[&str], pt: &str) -> Option<String> {
    attrs(section, "rtpmap").into_iter().find_map(|v| {
        let (p, rest) = v.split_once(' ')?;
        (p == pt).then(|| {
            let mut parts = rest.split('/');
            format!(
                "{}/{}",
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("")
            )
            .to_ascii_lowercase()
        })
    })
}

fn fmtp(section: &[&str], pt: &str) -> Option<String> {
    attrs(section, "fmtp").into_iter().find_map(|v| {
        let (p, rest) = v.split_once(' ')?;
        (p == pt).then(|| rest.to_string())
    })
}

/// ICE credentials of an SDP or fragment: media level of the first section
/// wins over session level (RFC 8839 §5.4).
fn ice_credentials(text: &str) -> (String, String) {
    let (session, media) = split_sdp(text);
    let first = media.first().cloned().unwrap_or_default();
    let ufrag = attr(&first, "ice-ufrag").or_else(|| attr(&session, "ice-ufrag"));
    let pwd = attr(&first, "ice-pwd").or_else(|| attr(&session, "ice-pwd"));
    match (ufrag, pwd) {
        (Some(u), Some(p)) => (u.to_string(), p.to_string()),
        _ => panic!("no a=ice-ufrag / a=ice-pwd in:\n{text}"),
    }
}

/// The server's host candidate (`--public-ip 127.0.0.1`, the UDP port) is there.
fn assert_server_candidate(what: &str, text: &str, server: &Server) {
    let needle = format!(" 127.0.0.1 {} typ host", server.udp_port);
    let found = sdp_lines(text).iter().any(|l| {
        l.starts_with("a=candidate:")
            && l.to_ascii_lowercase().contains(" udp ")
            && l.contains(&needle)
    });
    assert!(found, "{what} lacks the server's UDP host candidate '{needle}' (W 4.3.2: the answer SHALL contain all server candidates):\n{text}");
}

/// JSEP answer checks common to WHIP and WHEP: same m-sections and mids as the
/// offer, the expected direction, payload types taken from the offer with the
/// offer's codec, ICE/DTLS attributes, BUNDLE, and our host candidate.
fn assert_answer_shape(server: &Server, offer: &str, answer: &str, direction: &str) {
    assert!(
        answer.starts_with("v=0\r\n"),
        "answer must start with v=0:\n{answer}"
    );
    assert_crlf("SDP answer", answer);
    let (_, offer_media) = split_sdp(offer);
    let (session, media) = split_sdp(answer);
    assert_eq!(
        media.len(),
        offer_media.len(),
        "answer must have one m-section per offered m-section (RFC 3264 §6):\n{answer}"
    );
    let mut mids = Vec::new();
    for (o, a) in offer_media.iter().zip(&media) {
        assert_eq!(
            m_kind(o),
            m_kind(a),
            "m-section kinds/order differ:\n{answer}"
        );
        assert_eq!(
            attr(o, "mid"),
            attr(a, "mid"),
            "a=mid must echo the offer:\n{answer}"
        );
        mids.push(attr(a, "mid").unwrap_or_default());
        let bundle_only = attr(a, "bundle-only").is_some();
        if m_port(a) == 0 && !bundle_only {
            continue; // rejected section; W 4.4.3 makes this a failure elsewhere
        }
        assert!(
            attr(a, direction).is_some(),
            "m-section {:?} lacks a={direction}:\n{answer}",
            attr(a, "mid")
        );
        for other in ["sendrecv", "sendonly", "recvonly", "inactive"] {
            if other != direction {
                assert!(
                    attr(a, other).is_none(),
                    "m-section {:?} carries a={other}, expected a={direction}:\n{answer}",
                    attr(a, "mid")
                );
            }
        }
        let offered = m_payload_types(o);
        for pt in m_payload_types(a) {
            assert!(
                offered.contains(&pt),
                "answer payload type {pt} was not offered in {}",
                o[0]
            );
            if let (Some(ours), Some(theirs)) = (rtpmap(a, pt), rtpmap(o, pt)) {
                assert_eq!(
                    ours, theirs,
                    "payload type {pt} must keep the offer's codec (JSEP 5.3.1)"
                );
            }
        }
        let setup = attr(a, "setup").or_else(|| attr(&session, "setup"));
        assert!(
            matches!(setup, Some("passive") | Some("active")),
            "answer a=setup must be passive or active, got {setup:?}"
        );
        let fp = attr(a, "fingerprint")
            .or_else(|| attr(&session, "fingerprint"))
            .unwrap_or_default();
        assert!(
            fp.to_ascii_lowercase().starts_with("sha-256 "),
            "answer needs a=fingerprint:sha-256, got {fp:?}"
        );
        assert!(
            attr(a, "rtcp-mux").is_some(),
            "answer m-section lacks a=rtcp-mux (W 4.4.1)"
        );
    }
    let bundle = attr(&session, "group").unwrap_or_default();
    let mut bundled: Vec<&str> = bundle.split(' ').collect();
    assert_eq!(
        bundled.remove(0),
        "BUNDLE",
        "answer needs a=group:BUNDLE (W 4.4.1), got {bundle:?}"
    );
    assert_eq!(
        bundled, mids,
        "answer BUNDLE group must list the accepted mids"
    );
    assert!(
        attr(&session, "ice-lite").is_some(),
        "the server is ICE-lite (ARCHITECTURE principle 2) and must say so with a session-level a=ice-lite (RFC 8839 §5.3):\n{answer}"
    );
    let (ufrag, pwd) = ice_credentials(answer);
    assert!(
        ufrag.len() >= 4 && pwd.len() >= 22,
        "ICE credentials too short (RFC 8839 §5.4): {ufrag:?} {pwd:?}"
    );
    assert_server_candidate("SDP answer", answer, server);
}

/// A trickle-ice-sdpfrag for the offerer-tagged (first) m-section (W 4.3.2).
fn sdpfrag(offer: &str, ufrag: &str, pwd: &str, candidates: &[&str], end: bool) -> String {
    let (session, media) = split_sdp(offer);
    let first = &media[0];
    let mut out = String::new();
    if let Some(opts) = attr(&session, "ice-options").or_else(|| attr(first, "ice-options")) {
        out += &format!("a=ice-options:{opts}\r\n");
    }
    if let Some(group) = attr(&session, "group") {
        out += &format!("a=group:{group}\r\n");
    }
    out += &format!("{}\r\n", first[0]);
    out += &format!("a=mid:{}\r\n", attr(first, "mid").expect("offer mid"));
    out += &format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    for c in candidates {
        out += &format!("a=candidate:{c}\r\n");
    }
    if end {
        out += "a=end-of-candidates\r\n";
    }
    out
}

fn trickle_candidates(ufrag: &str) -> Vec<String> {
    vec![
        format!("3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag {ufrag} network-id 2"),
        format!("842163049 1 udp 1686052607 203.0.113.7 47012 typ srflx raddr 198.51.100.2 rport 61765 generation 0 ufrag {ufrag} network-id 2"),
        // Browsers trickle mDNS and TCP candidates too; unsupported ones are
        // discarded silently, not rejected (W 4.3.2).
        format!("2154773085 1 tcp 1518214911 198.51.100.2 9 typ host tcptype active generation 0 ufrag {ufrag} network-id 2"),
        "1976301456 1 udp 2122129151 7d3b6a3e-0f1c-4c4e-9f55-3b2a1c0d9e8f.local 58443 typ host generation 0".to_string(),
    ]
}

fn trickle_body(session: &Session) -> String {
    let (ufrag, pwd) = ice_credentials(&session.offer);
    let cands = trickle_candidates(&ufrag);
    let refs: Vec<&str> = cands.iter().map(String::as_str).collect();
    sdpfrag(&session.offer, &ufrag, &pwd, &refs, true)
}

fn restart_body(session: &Session, ufrag: &str, pwd: &str) -> String {
    let cands = trickle_candidates(ufrag);
    let refs: Vec<&str> = cands.iter().map(String::as_str).collect();
    sdpfrag(&session.offer, ufrag, pwd, &refs, false)
}

/// Checks a 200 answer to an ICE restart (W 4.3.3) and returns the new ETag.
fn assert_restart_answer(
    server: &Server,
    session: &Session,
    reply: &Reply,
    old_etags: &[&str],
) -> String {
    reply.expect(200);
    let ct = reply.header("content-type").unwrap_or_default();
    assert!(
        ct.to_ascii_lowercase().starts_with(FRAG),
        "ICE restart 200 must be {FRAG}, got {ct:?}:\n{}",
        reply.dump()
    );
    let etag = reply.header("etag").unwrap_or_else(|| {
        panic!(
            "ICE restart 200 must carry the new ETag (W 4.3.3):\n{}",
            reply.dump()
        )
    });
    assert!(
        is_strong_etag(&etag),
        "new ETag must be strong, got {etag:?}"
    );
    for old in old_etags {
        assert_ne!(&etag, old, "ICE restart must produce a new entity-tag");
    }
    let frag = &reply.body;
    assert_crlf("ICE restart sdpfrag", frag);
    let (ufrag, pwd) = ice_credentials(frag);
    let (old_ufrag, old_pwd) = ice_credentials(&session.answer);
    assert_ne!(
        ufrag, old_ufrag,
        "ICE restart answer must carry a new ice-ufrag:\n{frag}"
    );
    assert_ne!(
        pwd, old_pwd,
        "ICE restart answer must carry a new ice-pwd:\n{frag}"
    );
    assert!(
        ufrag.len() >= 4 && pwd.len() >= 22,
        "ICE credentials too short: {ufrag:?} {pwd:?}"
    );
    let (fsession, fmedia) = split_sdp(frag);
    let (_, omedia) = split_sdp(&session.offer);
    assert!(
        !fmedia.is_empty(),
        "ICE restart sdpfrag needs the m= line of the bundle's first section (W 4.3.3):\n{frag}"
    );
    assert_eq!(
        attr(&fmedia[0], "mid"),
        attr(&omedia[0], "mid"),
        "sdpfrag a=mid must be the offerer-tagged mid:\n{frag}"
    );
    // W 4.3.3: "include the same 'ice-options,' 'ice-pacing,' and 'ice-lite'
    // attributes as those used in the SDP offer or answer".
    let (asession, amedia) = split_sdp(&session.answer);
    for name in ["ice-lite", "ice-options", "ice-pacing"] {
        let tokens = |s: Option<&str>| {
            s.map(|v| {
                let mut t: Vec<String> = v.split_whitespace().map(str::to_string).collect();
                t.sort();
                t
            })
        };
        let in_answer = tokens(attr(&asession, name).or_else(|| attr(&amedia[0], name)));
        let in_frag = tokens(attr(&fsession, name).or_else(|| attr(&fmedia[0], name)));
        assert_eq!(
            in_frag, in_answer,
            "ICE restart body must repeat the answer's a={name} (W 4.3.3):\n{frag}"
        );
    }
    assert_server_candidate("ICE restart sdpfrag", frag, server);
    etag
}

fn ice_server_links(reply: &Reply) -> Vec<String> {
    reply
        .headers_all("link")
        .into_iter()
        .filter(|v| v.contains("ice-server"))
        .collect()
}

/// One server per Link field, target first, `rel="ice-server"` (W 4.6). OBS
/// splits on ',' and only takes a target at the very start of a piece.
fn assert_ice_server_links(reply: &Reply) {
    let links = ice_server_links(reply);
    assert!(
        !links.is_empty(),
        "no Link rel=\"ice-server\" although --ice-server is configured (W 4.6):\n{}",
        reply.dump()
    );
    for l in &links {
        assert!(
            l.starts_with('<'),
            "Link value must start with the <target>: {l:?}"
        );
        assert_eq!(
            l.matches('<').count(),
            1,
            "one ice server per Link header field (OBS cannot split joined links): {l:?}"
        );
        assert!(
            l.contains("rel=\"ice-server\"") || l.contains("rel=ice-server"),
            "Link must have rel=\"ice-server\": {l:?}"
        );
        for param in ["username", "credential"] {
            if let Some(i) = l.find(&format!("{param}=")) {
                assert_eq!(
                    &l[i + param.len() + 1..i + param.len() + 2],
                    "\"",
                    "{param} must be a quoted-string: {l:?}"
                );
            }
        }
    }
    let find = |target: &str| {
        links
            .iter()
            .find(|l| l.starts_with(&format!("<{target}>")))
            .unwrap_or_else(|| panic!("no Link for <{target}> among {links:#?}"))
    };
    let stun = find(STUN);
    assert!(
        !stun.contains("username=") && !stun.contains("credential="),
        "the STUN server has no credentials: {stun:?}"
    );
    // W 4.6: TURN credentials ride as the username / credential attributes.
    let turn = find(TURN);
    assert!(
        turn.contains(&format!("username=\"{TURN_USER}\"")),
        "TURN Link lacks username=\"{TURN_USER}\": {turn:?}"
    );
    assert!(
        turn.contains(&format!("credential=\"{TURN_CREDENTIAL}\"")),
        "TURN Link lacks credential=\"{TURN_CREDENTIAL}\": {turn:?}"
    );
    if let Some(i) = turn.find("credential-type=") {
        assert!(
            turn[i..].starts_with("credential-type=\"password\""),
            "credential-type must be \"password\" for a long-term credential: {turn:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// WHIP: POST
// ---------------------------------------------------------------------------

/// W 4.2: 201 + application/sdp answer + Location; W 4.3.1: strong ETag;
/// recvonly answer; W 4.3.2: answer carries the server's candidates.
#[test]
fn whip_post_chromium_offer_is_201_with_location_etag_and_recvonly_answer() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    assert_answer_shape(&server, &s.offer, &s.answer, "recvonly");
    let (_, media) = split_sdp(&s.answer);
    let audio_pt = m_payload_types(&media[0])[0];
    assert_eq!(
        rtpmap(&media[0], audio_pt).as_deref(),
        Some("opus/48000"),
        "audio must be Opus:\n{}",
        s.answer
    );
    let video_pt = m_payload_types(&media[1])[0];
    let video = rtpmap(&media[1], video_pt).unwrap_or_default();
    assert!(
        ["h264/90000", "vp8/90000", "vp9/90000", "av1/90000"].contains(&video.as_str()),
        "video codec {video:?} is not one Chromium offered"
    );
    assert_cors_exposes(&s.reply, &["Location", "ETag", "Link"]);
}

/// OBS 30+: no candidates, no end-of-candidates, never PATCHes, needs exactly
/// 201 + Location + a CRLF answer, then DELETEs with its Bearer and wants 200.
#[test]
fn whip_post_obs_offer_without_candidates_is_accepted_and_deleted() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "obs30_offer.sdp");
    assert_answer_shape(&server, &s.offer, &s.answer, "recvonly");
    let (_, media) = split_sdp(&s.answer);
    assert_eq!(
        m_payload_types(&media[0]),
        vec!["111"],
        "OBS offers Opus as pt 111 only"
    );
    assert_eq!(
        m_payload_types(&media[1])[0],
        "96",
        "OBS offers H.264 as pt 96 only"
    );
    assert_eq!(rtpmap(&media[1], "96").as_deref(), Some("h264/90000"));
    assert!(
        s.location.starts_with('/') || s.location.starts_with("http"),
        "OBS needs an absolute URL or an absolute path in Location, got {:?}",
        s.location
    );
    delete(&s.url, Some(KEY)).expect(200);
}

/// H.264 High and Main are accepted for passthrough, and the answer keeps the
/// offered profile of the payload type it picks.
#[test]
fn whip_post_h264_high_and_main_offer_keeps_the_offered_profile() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "h264_high_main_offer.sdp");
    assert_answer_shape(&server, &s.offer, &s.answer, "recvonly");
    let (_, omedia) = split_sdp(&s.offer);
    let (_, media) = split_sdp(&s.answer);
    let pt = m_payload_types(&media[1])[0];
    let profile = |f: Option<String>| {
        f.unwrap_or_default().split(';').find_map(|p| {
            p.trim()
                .strip_prefix("profile-level-id=")
                .map(|v| v[..4.min(v.len())].to_ascii_lowercase())
        })
    };
    let offered = profile(fmtp(&omedia[1], pt));
    let answered = profile(fmtp(&media[1], pt));
    assert!(
        answered.is_some(),
        "answer's H.264 pt {pt} has no profile-level-id:\n{}",
        s.answer
    );
    assert_eq!(
        answered, offered,
        "answer must keep the offered H.264 profile for pt {pt}"
    );
}

/// RFC 8853 §5.3.2 (W 4.8): a simulcast offer gets `a=simulcast:recv` with the
/// same rids; OBS aborts when the count of ';'-separated rids differs.
#[test]
fn whip_post_simulcast_offer_answers_simulcast_recv_with_every_rid() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_simulcast_offer.sdp");
    assert_answer_shape(&server, &s.offer, &s.answer, "recvonly");
    let (_, media) = split_sdp(&s.answer);
    let sim = attr(&media[1], "simulcast")
        .unwrap_or_else(|| panic!("answer lacks a=simulcast:\n{}", s.answer));
    let rest = sim
        .strip_prefix("recv ")
        .unwrap_or_else(|| panic!("a=simulcast must be 'recv …', got {sim:?}"));
    let mut rids: Vec<&str> = rest.split(';').collect();
    rids.sort();
    assert_eq!(
        rids,
        vec!["h", "l", "m"],
        "every offered rid must be accepted, in one ';' list"
    );
    let mut rid_lines: Vec<&str> = attrs(&media[1], "rid");
    rid_lines.sort();
    assert_eq!(
        rid_lines,
        vec!["h recv", "l recv", "m recv"],
        "answer needs a=rid:<id> recv for each layer"
    );
}

/// W 4.2: another content type "MUST" be rejected with a 4xx → 415.
#[test]
fn whip_post_with_wrong_or_missing_content_type_is_415() {
    let server = start();
    let offer = fixture("chromium_sendonly_offer.sdp");
    for ct in [
        Some("text/plain"),
        Some("application/json"),
        Some(FRAG),
        None,
    ] {
        let r = post(&server, "whip", ROOM, Some(KEY), ct, offer.clone());
        assert_problem(&r, 415);
        assert_cors_exposes(&r, &[]);
    }
    // Nothing was created by those attempts.
    publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
}

/// Media types are case-insensitive and may carry parameters (RFC 9110 §8.3.1).
#[test]
fn whip_post_accepts_content_type_parameters_and_any_case() {
    let server = start();
    for ct in ["application/sdp; charset=utf-8", "Application/SDP"] {
        let offer = fixture("obs30_offer.sdp");
        let r = post(&server, "whip", ROOM, Some(KEY), Some(ct), offer.clone());
        let s = created(&server, "whip", ROOM, offer, r);
        delete(&s.url, Some(KEY)).expect(200);
    }
}

/// W 4.2: malformed SDP "MUST" get a 4xx → 400, never a panic or a 5xx.
#[test]
fn whip_post_malformed_or_empty_sdp_is_400() {
    let server = start();
    let truncated_fingerprint = fixture("obs30_offer.sdp").replace(
        "a=fingerprint:sha-256 34:60:BE:31",
        "a=fingerprint:sha-256 34:6",
    );
    for (name, body) in [
        ("garbage", fixture("garbage.sdp")),
        ("empty", fixture("empty.sdp")),
        (
            "binary",
            String::from_utf8_lossy(&[0u8, 159, 146, 150, 255, 10, 13]).into_owned(),
        ),
        (
            "no m-lines",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_string(),
        ),
        ("bad fingerprint", truncated_fingerprint),
    ] {
        let r = post(&server, "whip", ROOM, Some(KEY), Some(SDP), body);
        assert!(
            r.status < 500,
            "{name}: a bad offer is a client error, got:\n{}",
            r.dump()
        );
        assert_problem(&r, 400);
    }
    // The server is still healthy and the room still free.
    publish(&server, ROOM, KEY, "obs30_offer.sdp");
}

/// W 4.4.3 + our contract: nothing we can receive → 422 and the problem says
/// which codecs we accept.
#[test]
fn whip_post_without_a_codec_we_accept_is_422_naming_the_accepted_codecs() {
    let server = start();
    let r = post(
        &server,
        "whip",
        ROOM,
        Some(KEY),
        Some(SDP),
        fixture("unsupported_codecs_offer.sdp"),
    );
    let p = assert_problem(&r, 422);
    let text = p
        .to_string()
        .to_ascii_lowercase()
        .replace(['.', '-', ' '], "");
    assert!(
        text.contains("opus"),
        "422 problem must name the audio codecs we accept:\n{p}"
    );
    assert!(
        text.contains("h264") || text.contains("vp8"),
        "422 problem must name the video codecs we accept:\n{p}"
    );
}

/// W 4.4.3: no partially successful answers: reject with 422 or 400 rather
/// than accept video and drop audio.
#[test]
fn whip_post_partially_supported_offer_is_rejected_not_half_answered() {
    let server = start();
    let r = post(
        &server,
        "whip",
        ROOM,
        Some(KEY),
        Some(SDP),
        fixture("partially_supported_offer.sdp"),
    );
    assert_problem_one_of(&r, &[400, 422]);
}

/// W 4.2: "inactive" and "recvonly" offers MUST NOT be used by WHIP clients.
#[test]
fn whip_post_recvonly_offer_is_rejected() {
    let server = start();
    let r = post(
        &server,
        "whip",
        ROOM,
        Some(KEY),
        Some(SDP),
        fixture("chromium_recvonly_whep_offer.sdp"),
    );
    assert_problem_one_of(&r, &[400, 422]);
}

/// W 4.7.1 + RFC 6750 §3 + RFC 9110 §15.5.2 (401 MUST carry WWW-Authenticate).
#[test]
fn whip_post_requires_the_rooms_bearer_key() {
    let server = start();
    let offer = fixture("obs30_offer.sdp");
    let cases: [(&str, Option<String>); 5] = [
        ("no Authorization", None),
        ("wrong key", Some(format!("Bearer {KEY}x"))),
        ("other room's key", Some(format!("Bearer {OTHER_KEY}"))),
        ("Basic scheme", Some("Basic c3R1ZGlvOmtleQ==".to_string())),
        ("empty bearer", Some("Bearer ".to_string())),
    ];
    for (name, auth) in cases {
        let mut rb = client()
            .post(server.url(&format!("/whip/{ROOM}")))
            .header("Origin", ORIGIN)
            .header("Content-Type", SDP)
            .body(offer.clone());
        if let Some(a) = &auth {
            rb = rb.header("Authorization", a);
        }
        let r = send(format!("POST /whip/{ROOM} ({name})"), rb);
        assert_problem(&r, 401);
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(
            www.to_ascii_lowercase().starts_with("bearer"),
            "{name}: 401 must carry WWW-Authenticate: Bearer …, got {www:?}"
        );
        assert_cors_exposes(&r, &[]);
    }
    // Auth schemes are case-insensitive (RFC 9110 §11.1).
    let rb = client()
        .post(server.url(&format!("/whip/{ROOM}")))
        .header("Content-Type", SDP)
        .header("Authorization", format!("bearer {KEY}"))
        .body(offer.clone());
    let r = send("POST with lower-case 'bearer'", rb);
    created(&server, "whip", ROOM, offer, r);
}

#[test]
fn whip_post_to_an_unknown_room_is_404() {
    let server = start();
    let r = post(
        &server,
        "whip",
        "no-such-room",
        Some(KEY),
        Some(SDP),
        fixture("obs30_offer.sdp"),
    );
    assert_problem(&r, 404);
}

/// Our contract: one publisher per room; 409 while it is live, free again after
/// its DELETE; rooms are independent.
#[test]
fn whip_second_publisher_is_409_until_the_first_leaves() {
    let server = start();
    let first = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    let r = post(
        &server,
        "whip",
        ROOM,
        Some(KEY),
        Some(SDP),
        fixture("obs30_offer.sdp"),
    );
    assert_problem(&r, 409);
    // A wrong key is told 401, not that the room is busy.
    let r = post(
        &server,
        "whip",
        ROOM,
        Some("nope"),
        Some(SDP),
        fixture("obs30_offer.sdp"),
    );
    assert_problem(&r, 401);
    // Another room is unaffected.
    publish(&server, OTHER_ROOM, OTHER_KEY, "obs30_offer.sdp");
    delete(&first.url, Some(KEY)).expect(200);
    publish(&server, ROOM, KEY, "obs30_offer.sdp");
}

/// W 6 (IDOR): session URLs are unique and hard to guess.
#[test]
fn whip_session_urls_are_unique_and_unguessable() {
    let server = start();
    let a = publish(&server, ROOM, KEY, "obs30_offer.sdp");
    let b = publish(&server, OTHER_ROOM, OTHER_KEY, "obs30_offer.sdp");
    delete(&a.url, Some(KEY)).expect(200);
    let c = publish(&server, ROOM, KEY, "obs30_offer.sdp");
    let id = |s: &Session| s.url.rsplit('/').next().unwrap_or("").to_string();
    assert_ne!(id(&a), id(&c), "a new session must get a new id");
    assert_ne!(
        a.etag, c.etag,
        "a new ICE session must get a new entity-tag"
    );
    for s in [&a, &b, &c] {
        assert!(
            id(s).len() >= 16,
            "session id {:?} is too short to be unguessable (W 6, RFC 4086)",
            id(s)
        );
    }
}

// ---------------------------------------------------------------------------
// WHIP: PATCH, DELETE
// ---------------------------------------------------------------------------

/// W 4.3.2: trickle → 204, no body, no ETag; unsupported candidates (TCP,
/// mDNS) are dropped silently; a lone end-of-candidates is fine.
#[test]
fn whip_patch_trickle_is_204_without_body_or_etag() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    let r = patch(&s.url, Some(KEY), Some(&s.etag), FRAG, trickle_body(&s));
    r.expect(204);
    assert!(r.body.is_empty(), "204 must have no body:\n{}", r.dump());
    assert!(
        r.header("etag").is_none(),
        "trickle 204 MUST NOT include an ETag (W 4.3.2):\n{}",
        r.dump()
    );

    let (ufrag, pwd) = ice_credentials(&s.offer);
    let eoc = sdpfrag(&s.offer, &ufrag, &pwd, &[], true);
    patch(&s.url, Some(KEY), Some(&s.etag), FRAG, eoc).expect(204);

    // `If-Match: *` with unchanged credentials is a trickle, not a restart:
    // the restart is recognised by new ufrag/pwd (W 4.3.3), and several
    // browser clients send `*` on every PATCH.
    let r = patch(&s.url, Some(KEY), Some("*"), FRAG, trickle_body(&s));
    r.expect(204);
    assert!(
        r.header("etag").is_none(),
        "a trickle must not change the ETag:\n{}",
        r.dump()
    );
}

/// W 4.3.3: ICE restart → 200, sdpfrag with new ufrag/pwd and candidates, new
/// ETag; the old ETag is then stale (412) and the new one works.
#[test]
fn whip_patch_ice_restart_is_200_with_new_credentials_and_new_etag() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    let r = patch(
        &s.url,
        Some(KEY),
        Some("*"),
        FRAG,
        restart_body(&s, "ysXw", "vw5LmwG4y/e6dPP/zAP9Gp5k"),
    );
    let etag2 = assert_restart_answer(&server, &s, &r, &[&s.etag]);

    let stale = patch(
        &s.url,
        Some(KEY),
        Some(&s.etag),
        FRAG,
        sdpfrag(&s.offer, "ysXw", "vw5LmwG4y/e6dPP/zAP9Gp5k", &[], true),
    );
    assert_problem(&stale, 412);

    let cands = trickle_candidates("ysXw");
    let refs: Vec<&str> = cands.iter().map(String::as_str).collect();
    let r = patch(
        &s.url,
        Some(KEY),
        Some(&etag2),
        FRAG,
        sdpfrag(&s.offer, "ysXw", "vw5LmwG4y/e6dPP/zAP9Gp5k", &refs, true),
    );
    r.expect(204);

    // The RFC's own example writes the wildcard quoted (`If-Match: "*"`);
    // clients copy it, so it must restart too.
    let r = patch(
        &s.url,
        Some(KEY),
        Some("\"*\""),
        FRAG,
        restart_body(&s, "Q7rT", "k2Jd9sLq0WmZx8Vb5Nc3Hf6G"),
    );
    assert_restart_answer(&server, &s, &r, &[&s.etag, &etag2]);
}

/// W 4.3.1 + RFC 6585 §3: a PATCH without If-Match → 428.
#[test]
fn whip_patch_without_if_match_is_428() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    let r = patch(&s.url, Some(KEY), None, FRAG, trickle_body(&s));
    assert_problem(&r, 428);
    let r = patch(
        &s.url,
        Some(KEY),
        None,
        FRAG,
        restart_body(&s, "ysXw", "vw5LmwG4y/e6dPP/zAP9Gp5k"),
    );
    assert_problem(&r, 428);
}

/// W 4.3.1 + RFC 9110 §13.1.1: a non-matching entity-tag → 412; If-Match
/// compares strongly, so the weak form of the current tag does not match.
#[test]
fn whip_patch_with_stale_if_match_is_412() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    for tag in ["\"not-the-etag\"".to_string(), format!("W/{}", s.etag)] {
        let r = patch(&s.url, Some(KEY), Some(&tag), FRAG, trickle_body(&s));
        assert_problem(&r, 412);
    }
    // A failed precondition changes nothing: the real tag still works.
    patch(&s.url, Some(KEY), Some(&s.etag), FRAG, trickle_body(&s)).expect(204);
    // A list containing the current tag matches.
    let list = format!("\"other\", {}", s.etag);
    patch(&s.url, Some(KEY), Some(&list), FRAG, trickle_body(&s)).expect(204);
}

/// W 4.3.1: other content type → 4xx (415); malformed fragment → 4xx (400).
#[test]
fn whip_patch_with_wrong_content_type_is_415_and_garbage_is_400() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    for ct in [SDP, "text/plain", "application/json"] {
        let r = patch(&s.url, Some(KEY), Some(&s.etag), ct, trickle_body(&s));
        assert_problem(&r, 415);
    }
    let r = patch(
        &s.url,
        Some(KEY),
        Some(&s.etag),
        FRAG,
        "this is not an sdp fragment\r\n{}\r\n".into(),
    );
    assert_problem(&r, 400);
    // The session survived the bad requests.
    patch(&s.url, Some(KEY), Some(&s.etag), FRAG, trickle_body(&s)).expect(204);
}

#[test]
fn whip_patch_and_delete_of_unknown_sessions_are_404() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    for path in [
        format!("/whip/{ROOM}/00000000000000000000000000000000"),
        format!("/whip/{ROOM}/no-such-session"),
        "/whip/no-such-room/00000000000000000000000000000000".to_string(),
    ] {
        let url = server.url(&path);
        assert_problem(
            &patch(&url, Some(KEY), Some("*"), FRAG, trickle_body(&s)),
            404,
        );
        assert_problem(&delete(&url, Some(KEY)), 404);
    }
    // A real session id under the wrong room is not that session.
    let id = s.url.rsplit('/').next().unwrap();
    let wrong_room = server.url(&format!("/whip/{OTHER_ROOM}/{id}"));
    assert_problem(&delete(&wrong_room, Some(OTHER_KEY)), 404);
    delete(&s.url, Some(KEY)).expect(200);
}

/// W 4.2: DELETE → 200 OK; then the session is gone (404); entity-tags on
/// DELETE are ignored (W 4.3.1).
#[test]
fn whip_delete_is_200_then_404() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    let rb = client()
        .delete(&s.url)
        .header("Authorization", format!("Bearer {KEY}"))
        .header("If-Match", "\"stale-tag-must-be-ignored\"");
    send("DELETE with a stale If-Match", rb).expect(200);
    assert_problem(&delete(&s.url, Some(KEY)), 404);
    assert_problem(
        &patch(&s.url, Some(KEY), Some(&s.etag), FRAG, trickle_body(&s)),
        404,
    );
}

/// W 4.7.1: sessions MAY require the Bearer token; ours do, so a leaked
/// session URL alone cannot end someone's stream.
#[test]
fn whip_session_requests_require_the_rooms_key() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    for key in [None, Some("wrong"), Some(OTHER_KEY)] {
        assert_problem(&delete(&s.url, key), 401);
        assert_problem(
            &patch(&s.url, key, Some(&s.etag), FRAG, trickle_body(&s)),
            401,
        );
    }
    patch(&s.url, Some(KEY), Some(&s.etag), FRAG, trickle_body(&s)).expect(204);
    delete(&s.url, Some(KEY)).expect(200);
}

// ---------------------------------------------------------------------------
// WHIP: OPTIONS, CORS, Link, other methods
// ---------------------------------------------------------------------------

/// W 4.2 + Fetch: a browser preflight needs no auth, gets CORS and Accept-Post;
/// W 4.6: no ice-server Links on a preflight.
#[test]
fn whip_options_preflight_answers_cors_and_accept_post_without_links() {
    let server = start_with_ice_servers();
    let r = options(
        &server.url(&format!("/whip/{ROOM}")),
        &[
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
    );
    expect_options_ok(&r);
    let acao = r.header("access-control-allow-origin").unwrap_or_default();
    assert!(
        acao == "*" || acao == ORIGIN,
        "preflight Access-Control-Allow-Origin {acao:?}:\n{}",
        r.dump()
    );
    let acam = r.header("access-control-allow-methods").unwrap_or_default();
    assert!(
        acam == "*" || lists(&acam, "POST"),
        "preflight must allow POST, got {acam:?}"
    );
    let acah = r.header("access-control-allow-headers").unwrap_or_default();
    // `*` does not cover Authorization (Fetch): it must be listed.
    for h in ["authorization", "content-type"] {
        assert!(
            lists(&acah, h),
            "preflight must allow header {h}, got {acah:?}"
        );
    }
    let accept_post = r.header("accept-post").unwrap_or_default();
    assert!(
        lists(&accept_post, SDP),
        "OPTIONS SHOULD carry Accept-Post: application/sdp (W 4.2), got {accept_post:?}"
    );
    assert!(
        ice_server_links(&r).is_empty(),
        "a CORS preflight SHOULD NOT carry ice-server Links (W 4.6):\n{}",
        r.dump()
    );

    // The session's preflight allows PATCH and DELETE with If-Match.
    let s = publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    let r = options(
        &s.url,
        &[
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "PATCH"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type, if-match",
            ),
        ],
    );
    expect_options_ok(&r);
    let acam = r.header("access-control-allow-methods").unwrap_or_default();
    for m in ["PATCH", "DELETE"] {
        assert!(
            acam == "*" || lists(&acam, m),
            "session preflight must allow {m}, got {acam:?}"
        );
    }
    let acah = r.header("access-control-allow-headers").unwrap_or_default();
    for h in ["authorization", "content-type", "if-match"] {
        assert!(
            lists(&acah, h),
            "session preflight must allow header {h}, got {acah:?}"
        );
    }
}

/// W 4.6: clients that cannot set ICE servers after the offer ask with a
/// plain OPTIONS (no Access-Control-Request-Method) and get the Links.
#[test]
fn whip_plain_options_lists_ice_servers_and_accept_post() {
    let server = start_with_ice_servers();
    let r = options(&server.url(&format!("/whip/{ROOM}")), &[]);
    expect_options_ok(&r);
    let accept_post = r.header("accept-post").unwrap_or_default();
    assert!(
        lists(&accept_post, SDP),
        "Accept-Post: application/sdp expected, got {accept_post:?}"
    );
    assert_ice_server_links(&r);
}

/// W 4.6: the 201 carries one Link per configured ICE server, in a shape OBS
/// parses; none when none are configured.
#[test]
fn whip_201_carries_one_link_per_ice_server() {
    let server = start_with_ice_servers();
    let s = publish(&server, ROOM, KEY, "obs30_offer.sdp");
    assert_ice_server_links(&s.reply);
    assert_cors_exposes(&s.reply, &["Location", "ETag", "Link"]);

    let bare = start();
    let s = publish(&bare, ROOM, KEY, "obs30_offer.sdp");
    assert!(
        ice_server_links(&s.reply).is_empty(),
        "no --ice-server configured, yet:\n{}",
        s.reply.dump()
    );
}

/// W 4.1: GET on endpoint and session → 2xx, no content; other methods → 405
/// with Allow (RFC 9110 §15.5.6) and a problem body.
#[test]
fn whip_get_is_empty_2xx_and_other_methods_are_405() {
    let server = start();
    let s = publish(&server, ROOM, KEY, "obs30_offer.sdp");
    for url in [server.url(&format!("/whip/{ROOM}")), s.url.clone()] {
        let rb = client()
            .get(&url)
            .header("Authorization", format!("Bearer {KEY}"));
        let r = send(format!("GET {url}"), rb);
        assert!(
            (200..300).contains(&r.status),
            "GET must be 2xx (W 4.1):\n{}",
            r.dump()
        );
        assert!(
            r.body.is_empty(),
            "GET must have no content (W 4.1):\n{}",
            r.dump()
        );
    }
    let cases = [
        (Method::PUT, server.url(&format!("/whip/{ROOM}")), "POST"),
        (Method::POST, s.url.clone(), "DELETE"),
    ];
    for (method, url, allowed) in cases {
        let rb = client()
            .request(method.clone(), &url)
            .header("Authorization", format!("Bearer {KEY}"))
            .header("Content-Type", SDP)
            .body(fixture("obs30_offer.sdp"));
        let r = send(format!("{method} {url}"), rb);
        assert_problem(&r, 405);
        let allow = r.header("allow").unwrap_or_default();
        assert!(
            lists(&allow, allowed),
            "405 must carry Allow listing {allowed}, got {allow:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// WHEP
// ---------------------------------------------------------------------------

/// E 4.3.8: no live publisher → 409 with Retry-After in seconds.
#[test]
fn whep_before_a_publisher_is_409_with_retry_after() {
    let server = start();
    let assert_not_live = |server: &Server| {
        let r = post(
            server,
            "whep",
            ROOM,
            None,
            Some(SDP),
            fixture("chromium_recvonly_whep_offer.sdp"),
        );
        assert_problem(&r, 409);
        let ra = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("409 must carry Retry-After (E 4.3.8):\n{}", r.dump()));
        let secs: u64 = ra
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After must be delay-seconds, got {ra:?}"));
        assert!(secs >= 1, "Retry-After {secs}");
        assert_cors_exposes(&r, &[]);
    };
    assert_not_live(&server);
    let p = publish(&server, ROOM, KEY, "obs30_offer.sdp");
    subscribe(&server, ROOM);
    delete(&p.url, Some(KEY)).expect(200);
    assert_not_live(&server);
}

#[test]
fn whep_post_to_an_unknown_room_is_404() {
    let server = start();
    let r = post(
        &server,
        "whep",
        "no-such-room",
        None,
        Some(SDP),
        fixture("chromium_recvonly_whep_offer.sdp"),
    );
    assert_problem(&r, 404);
}

/// E 4.3.1: 201 + Location + ETag, sendonly answer; viewers need no stream
/// key; many viewers per room.
#[test]
fn whep_post_is_201_with_sendonly_answer_for_every_viewer() {
    let server = start();
    publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    let a = subscribe(&server, ROOM);
    assert_answer_shape(&server, &a.offer, &a.answer, "sendonly");
    assert_cors_exposes(&a.reply, &["Location", "ETag", "Link"]);
    let (_, media) = split_sdp(&a.answer);
    let audio_pt = m_payload_types(&media[0])[0];
    assert_eq!(
        rtpmap(&media[0], audio_pt).as_deref(),
        Some("opus/48000"),
        "viewer audio must be Opus"
    );
    let b = subscribe(&server, ROOM);
    assert_ne!(a.url, b.url, "each viewer gets its own session");
    assert_ne!(
        a.etag, b.etag,
        "each viewer's ICE session has its own entity-tag"
    );
}

/// E 4.3.4/4.3.5: wrong content type → 415, garbage → 400, a sendonly offer
/// (MUST NOT be used by players) → 400/422.
#[test]
fn whep_post_rejects_bad_offers() {
    let server = start();
    publish(&server, ROOM, KEY, "obs30_offer.sdp");
    let r = post(
        &server,
        "whep",
        ROOM,
        None,
        Some("text/plain"),
        fixture("chromium_recvonly_whep_offer.sdp"),
    );
    assert_problem(&r, 415);
    let r = post(
        &server,
        "whep",
        ROOM,
        None,
        Some(SDP),
        fixture("garbage.sdp"),
    );
    assert_problem(&r, 400);
    let r = post(&server, "whep", ROOM, None, Some(SDP), fixture("empty.sdp"));
    assert_problem(&r, 400);
    let r = post(
        &server,
        "whep",
        ROOM,
        None,
        Some(SDP),
        fixture("chromium_sendonly_offer.sdp"),
    );
    assert_problem_one_of(&r, &[400, 422]);
}

/// E 4.5: the same PATCH rules as WHIP; E 4.4: DELETE → 200, then 404.
#[test]
fn whep_patch_and_delete_follow_the_whip_rules() {
    let server = start();
    publish(&server, ROOM, KEY, "obs30_offer.sdp");
    let v = subscribe(&server, ROOM);
    let r = patch(&v.url, None, Some(&v.etag), FRAG, trickle_body(&v));
    r.expect(204);
    assert!(
        r.header("etag").is_none(),
        "trickle 204 MUST NOT include an ETag (E 4.5.2)"
    );
    assert_problem(&patch(&v.url, None, None, FRAG, trickle_body(&v)), 428);
    assert_problem(
        &patch(&v.url, None, Some("\"stale\""), FRAG, trickle_body(&v)),
        412,
    );
    assert_problem(
        &patch(&v.url, None, Some(&v.etag), "text/plain", trickle_body(&v)),
        415,
    );
    let r = patch(
        &v.url,
        None,
        Some("*"),
        FRAG,
        restart_body(&v, "Wh3p", "p4ssw0rdp4ssw0rdp4ssw0"),
    );
    let etag2 = assert_restart_answer(&server, &v, &r, &[&v.etag]);
    assert_problem(
        &patch(
            &v.url,
            None,
            Some(&v.etag),
            FRAG,
            sdpfrag(&v.offer, "Wh3p", "p4ssw0rdp4ssw0rdp4ssw0", &[], true),
        ),
        412,
    );
    patch(
        &v.url,
        None,
        Some(&etag2),
        FRAG,
        sdpfrag(&v.offer, "Wh3p", "p4ssw0rdp4ssw0rdp4ssw0", &[], true),
    )
    .expect(204);
    delete(&v.url, None).expect(200);
    assert_problem(&delete(&v.url, None), 404);
    assert_problem(
        &patch(&v.url, None, Some(&etag2), FRAG, trickle_body(&v)),
        404,
    );
}

/// E 4.4: OPTIONS for CORS with Accept-Post.
#[test]
fn whep_options_answers_cors_and_accept_post() {
    let server = start();
    let r = options(
        &server.url(&format!("/whep/{ROOM}")),
        &[
            ("Origin", ORIGIN),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
    );
    expect_options_ok(&r);
    let acao = r.header("access-control-allow-origin").unwrap_or_default();
    assert!(
        acao == "*" || acao == ORIGIN,
        "preflight Access-Control-Allow-Origin {acao:?}"
    );
    let acam = r.header("access-control-allow-methods").unwrap_or_default();
    assert!(
        acam == "*" || lists(&acam, "POST"),
        "preflight must allow POST, got {acam:?}"
    );
    assert!(lists(
        &r.header("access-control-allow-headers").unwrap_or_default(),
        "content-type"
    ));
    let accept_post = r.header("accept-post").unwrap_or_default();
    assert!(
        lists(&accept_post, SDP),
        "Accept-Post: application/sdp expected, got {accept_post:?}"
    );
}

/// E 4.10 + core extensions: extension Links point at usable URLs, and the
/// layer extension is only offered together with server-sent events that
/// announce "layers".
#[test]
fn whep_extension_links_are_consistent() {
    let server = start();
    publish(&server, ROOM, KEY, "chromium_simulcast_offer.sdp");
    let v = subscribe(&server, ROOM);
    let links = v.reply.headers_all("link");
    let ext: Vec<&String> = links
        .iter()
        .filter(|l| l.contains("urn:ietf:params:whep:ext:"))
        .collect();
    for l in &ext {
        let target = l
            .trim_start()
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .map(|(t, _)| t);
        let target = target.unwrap_or_else(|| panic!("extension Link without <target>: {l:?}"));
        assert!(
            target.starts_with('/') || target.starts_with("http"),
            "extension target {target:?}"
        );
    }
    let has = |rel: &str| {
        ext.iter()
            .find(|l| l.contains(&format!("rel=\"{rel}\"")) || l.contains(&format!("rel={rel}")))
    };
    if has("urn:ietf:params:whep:ext:core:layer").is_some() {
        let sse = has("urn:ietf:params:whep:ext:core:server-sent-events").unwrap_or_else(|| {
            panic!(
                "layer extension requires the server-sent-events extension:\n{}",
                v.reply.dump()
            )
        });
        if let Some(i) = sse.find("events=") {
            assert!(
                sse[i..].contains("layers"),
                "server-sent-events must announce the layers event: {sse:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Capacity
// ---------------------------------------------------------------------------

/// W 4.5 / E 4.7: at capacity → 503 with Retry-After; capacity comes back when
/// a session ends.
#[test]
fn at_capacity_posts_are_503_with_retry_after() {
    let mut args = rooms();
    args.extend(["--max-sessions".into(), "2".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    publish(&server, ROOM, KEY, "chromium_sendonly_offer.sdp");
    let viewer = subscribe(&server, ROOM);
    let assert_full = |r: &Reply| {
        assert_problem(r, 503);
        let ra = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("503 should carry Retry-After (W 4.5):\n{}", r.dump()));
        let secs: u64 = ra
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After must be delay-seconds, got {ra:?}"));
        assert!(secs >= 1, "Retry-After {secs}");
    };
    let offer = fixture("chromium_recvonly_whep_offer.sdp");
    assert_full(&post(&server, "whep", ROOM, None, Some(SDP), offer.clone()));
    assert_full(&post(
        &server,
        "whip",
        OTHER_ROOM,
        Some(OTHER_KEY),
        Some(SDP),
        fixture("obs30_offer.sdp"),
    ));
    delete(&viewer.url, None).expect(200);
    let r = post(&server, "whep", ROOM, None, Some(SDP), offer.clone());
    created(&server, "whep", ROOM, offer, r);
}
