//! Just enough STUN (RFC 8489) to route a datagram from an unknown address to
//! its peer: the USERNAME attribute of a binding request is
//! `<our ufrag>:<their ufrag>`, and our ufrag identifies the session in O(1).
//! Everything else about STUN is str0m's business.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
const HEADER_LEN: usize = 20;

/// True when the datagram looks like STUN (RFC 7983 demultiplexing: first
/// byte 0..=3 and the magic cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE
}

/// Our ICE ufrag from a STUN binding request's USERNAME (`local:remote`), if
/// the datagram is STUN and carries one. Never panics on any input.
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) {
        return None;
    }
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let body = datagram.get(HEADER_LEN..HEADER_LEN + body_len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        // Attributes are padded to a multiple of four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut d = vec![0x00, 0x01];
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&MAGIC_COOKIE);
        d.extend_from_slice(&[7; 12]);
        d.extend_from_slice(&body);
        d
    }

    #[test]
    fn finds_local_ufrag_after_other_attributes() {
        let d = binding_request(&[(0x8022, b"soft"), (ATTR_USERNAME, b"abcd1234:xyz")]);
        assert!(is_stun(&d));
        assert_eq!(local_ufrag(&d), Some("abcd1234"));
    }

    #[test]
    fn rejects_non_stun_and_truncated_input() {
        assert_eq!(local_ufrag(&[0x80, 0x60, 0, 1]), None); // RTP
        assert_eq!(local_ufrag(&[22, 254, 253]), None); // DTLS
        let mut d = binding_request(&[(ATTR_USERNAME, b"abcd:efgh")]);
        d.truncate(d.len() - 3);
        assert_eq!(local_ufrag(&d), None);
        // A length field pointing past the end.
        let mut d = binding_request(&[(ATTR_USERNAME, b"abcd:efgh")]);
        d[22] = 0xff;
        assert_eq!(local_ufrag(&d), None);
        assert_eq!(local_ufrag(&binding_request(&[])), None);
        assert_eq!(
            local_ufrag(&binding_request(&[(ATTR_USERNAME, b":x")])),
            None
        );
        for n in 0..40 {
            let d = binding_request(&[(ATTR_USERNAME, b"abcd:efgh")]);
            let _ = local_ufrag(&d[..n.min(d.len())]);
        }
    }
}
