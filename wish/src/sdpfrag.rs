//! RFC 8840 SDP fragments (`application/trickle-ice-sdpfrag`): what a
//! client PATCHes (candidates, or new credentials for an ICE restart) and
//! what we answer to a restart.

use sfu::IceFragment;

/// Most candidate lines one fragment may carry.
const MAX_CANDIDATES: usize = 64;

/// Parses a client's fragment. Credentials may sit at session level or
/// after `a=mid` (clients do both); unknown lines are ignored.
pub fn parse(text: &str) -> Result<IceFragment, String> {
    let mut frag = IceFragment::default();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        if line.len() < 2 || line.as_bytes()[1] != b'=' {
            return Err(format!("not an SDP line: {:?}", truncate(line)));
        }
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            frag.ufrag = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            frag.pwd = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("a=candidate:") {
            if frag.candidates.len() >= MAX_CANDIDATES {
                return Err(format!("more than {MAX_CANDIDATES} candidates"));
            }
            frag.candidates.push(format!("candidate:{}", v.trim()));
        } else if line == "a=end-of-candidates" {
            frag.end_of_candidates = true;
        }
    }
    if frag.ufrag.is_some() != frag.pwd.is_some() {
        return Err("a fragment with new credentials needs both a=ice-ufrag and a=ice-pwd".into());
    }
    Ok(frag)
}

/// The client's first `m=` line and its `a=mid`, echoed in a restart answer.
pub fn first_media(text: &str) -> Option<(String, Option<String>)> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r').trim());
    let m = lines.find(|l| l.starts_with("m="))?.to_string();
    let mid = lines
        .take_while(|l| !l.starts_with("m="))
        .find_map(|l| l.strip_prefix("a=mid:"))
        .map(str::to_string);
    Some((m, mid))
}

/// Our answer to an ICE restart (W 4.3.3): the new credentials and all our
/// candidates, in the client's first media section.
pub fn restart_answer(
    ufrag: &str,
    pwd: &str,
    candidates: &[String],
    media: Option<(String, Option<String>)>,
) -> String {
    // Repeat the answer's session-level ICE attributes (W 4.3.3).
    let mut s = String::from("a=ice-lite\r\na=ice-options:trickle\r\n");
    if let Some((m, mid)) = media {
        s.push_str(&m);
        s.push_str("\r\n");
        if let Some(mid) = mid {
            s.push_str(&format!("a=mid:{mid}\r\n"));
        }
    }
    s.push_str(&format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"));
    for c in candidates {
        let c = c.strip_prefix("a=").unwrap_or(c);
        s.push_str(&format!("a={c}\r\n"));
    }
    s.push_str("a=end-of-candidates\r\n");
    s
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRICKLE: &str = "a=ice-options:trickle ice2\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
        a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n\
        a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn parses_trickle_fragment() {
        let f = parse(TRICKLE).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.candidates.len(), 2);
        assert!(f.candidates[0].starts_with("candidate:1387637174 1 udp"));
        assert!(f.end_of_candidates);
        assert_eq!(
            first_media(TRICKLE),
            Some(("m=audio 9 UDP/TLS/RTP/SAVPF 111".into(), Some("0".into())))
        );
    }

    #[test]
    fn accepts_bare_end_of_candidates_and_lf() {
        let f = parse("a=end-of-candidates\n").unwrap();
        assert!(f.end_of_candidates && f.candidates.is_empty() && f.ufrag.is_none());
        assert!(parse("").unwrap().candidates.is_empty());
    }

    #[test]
    fn rejects_garbage_and_half_credentials() {
        assert!(parse("hello world").is_err());
        assert!(parse("a=ice-ufrag:abc\r\n").is_err());
        let many: String = (0..100)
            .map(|i| format!("a=candidate:{i} 1 udp 1 192.0.2.1 {i} typ host\r\n"))
            .collect();
        assert!(parse(&many).is_err());
    }

    #[test]
    fn restart_answer_shape() {
        let a = restart_answer(
            "newu",
            "newpassword",
            &["candidate:1 1 udp 2130706431 198.51.100.1 39132 typ host".into()],
            Some(("m=audio 9 UDP/TLS/RTP/SAVPF 111".into(), Some("0".into()))),
        );
        assert_eq!(
            a,
            "a=ice-lite\r\na=ice-options:trickle\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:newu\r\na=ice-pwd:newpassword\r\n\
             a=candidate:1 1 udp 2130706431 198.51.100.1 39132 typ host\r\na=end-of-candidates\r\n"
        );
    }
}
