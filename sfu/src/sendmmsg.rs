//! Batched sending: many datagrams, to many destinations, in one
//! `sendmmsg(2)` call (Linux). The fan-out turns one publisher packet into
//! one datagram per viewer; sending them one `sendmsg` each made the system
//! call the largest single cost of the media thread (docs/benchmarks.md).
//!
//! Each message carries its own destination and, when known, the local
//! address to send from (`IP_PKTINFO` / `IPV6_PKTINFO`, as quinn-udp does
//! for one datagram), so multi-homed hosts answer from the address a peer
//! talks to. Buffers are kept between calls: nothing is allocated per
//! datagram here.
//!
//! With UDP GSO (`UDP_SEGMENT`, Linux 4.18+), a run of datagrams to one
//! destination of one size (the last may be shorter), which is what a
//! viewer's share of a video frame is, goes as one message: the kernel
//! walks its send path once for the run and splits it into datagrams at
//! the end (or the NIC does). The datagrams are gathered from their own
//! buffers (one iovec each), never copied. If the kernel or the device
//! refuses it, the batch falls back to one message per datagram for good.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use crate::engine::Outgoing;

/// Most datagrams per `sendmmsg` call (the kernel's UIO_MAXIOV is 1024).
pub const BATCH: usize = 64;

/// Room for an `in6_pktinfo` control message (the larger of the two,
/// 40 bytes) and a `UDP_SEGMENT` one (24 bytes).
const CMSG_SPACE: usize = 80;

/// `UDP_SEGMENT` from `linux/udp.h` (the libc crate has it only for
/// some Linux targets); the value is part of the kernel's stable ABI.
const UDP_SEGMENT: libc::c_int = 103;

/// Most bytes in one GSO message (the kernel's limit is 64 KiB with headers).
const GSO_MAX_BYTES: usize = 60_000;

/// Reusable headers for one batch.
pub struct Batch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u64; CMSG_SPACE / 8]>,
    /// Datagrams in each message of the last call.
    runs: Vec<usize>,
    /// Whether the socket is IPv6 (destinations then go as IPv6, v4-mapped).
    v6_socket: bool,
    /// Most datagrams per GSO message; 1: GSO off.
    gso_segments: usize,
}

// SAFETY: the raw pointers inside the headers only ever point into this
// struct's own vectors, and are rebuilt before each use.
unsafe impl Send for Batch {}

impl Batch {
    /// `gso_segments`: most datagrams one message may carry (1: no GSO),
    /// e.g. quinn-udp's `UdpSocketState::max_gso_segments`.
    pub fn new(v6_socket: bool, gso_segments: usize) -> Batch {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Batch {
            hdrs: vec![zero_hdr; BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            addrs: vec![zero_addr; BATCH],
            cmsgs: vec![[0u64; CMSG_SPACE / 8]; BATCH],
            runs: Vec::with_capacity(BATCH),
            v6_socket,
            gso_segments: gso_segments.clamp(1, BATCH),
        }
    }

    /// Sends as many of `outs` (at most [`BATCH`]) as the socket takes now.
    /// Returns how many left (from the front); `WouldBlock` when none.
    pub fn send(&mut self, fd: RawFd, outs: &[Outgoing]) -> io::Result<usize> {
        let outs = &outs[..outs.len().min(BATCH)];
        gso_runs(outs, self.gso_segments, &mut self.runs);
        let mut first = 0;
        for (i, &len) in self.runs.iter().enumerate() {
            let run = &outs[first..first + len];
            for (iov, out) in self.iovs[first..].iter_mut().zip(run) {
                *iov = libc::iovec {
                    iov_base: out.contents.as_ptr() as *mut libc::c_void,
                    iov_len: out.contents.len(),
                };
            }
            let head = &run[0];
            let addr_len = write_addr(&mut self.addrs[i], head.destination, self.v6_socket);
            let mut cmsg_len = match head.source_ip.filter(|ip| !ip.is_unspecified()) {
                Some(ip) => write_pktinfo(&mut self.cmsgs[i], ip, self.v6_socket),
                None => 0,
            };
            if len > 1 {
                cmsg_len += write_segment(&mut self.cmsgs[i], cmsg_len, head.contents.len());
            }
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = addr_len;
            h.msg_iov = &mut self.iovs[first];
            h.msg_iovlen = len as _;
            h.msg_control = if cmsg_len > 0 {
                self.cmsgs[i].as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
            h.msg_controllen = cmsg_len as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
            first += len;
        }
        // SAFETY: every header points at live buffers of this batch and of
        // `outs`, which outlive the call; `runs.len()` headers are set.
        let sent = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), self.runs.len() as _, 0) };
        if sent < 0 {
            let e = io::Error::last_os_error();
            let refused = matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL));
            if self.runs[0] > 1 && refused {
                // No GSO here (an old kernel, or a device without checksum
                // offload): one message per datagram from now on.
                tracing::warn!("UDP GSO refused ({e}); sending one datagram per message");
                self.gso_segments = 1;
                return self.send(fd, outs);
            }
            return Err(e);
        }
        Ok(self.runs[..sent as usize].iter().sum())
    }
}

/// Splits `outs` into messages: runs of datagrams to one destination from
/// one source, all of the first one's size but the last, which may be
/// shorter (what GSO requires), at most `max` datagrams and
/// [`GSO_MAX_BYTES`] each.
fn gso_runs(outs: &[Outgoing], max: usize, runs: &mut Vec<usize>) {
    runs.clear();
    let mut i = 0;
    while i < outs.len() {
        let head = &outs[i];
        let size = head.contents.len();
        let mut len = 1;
        let mut bytes = size;
        while len < max && i + len < outs.len() {
            let next = &outs[i + len];
            let fits = next.destination == head.destination
                && next.source_ip == head.source_ip
                && next.contents.len() <= size
                && bytes + next.contents.len() <= GSO_MAX_BYTES;
            if !fits {
                break;
            }
            len += 1;
            bytes += next.contents.len();
            if next.contents.len() < size {
                break; // a shorter datagram ends a run
            }
        }
        runs.push(len);
        i += len;
    }
}

/// Appends the `UDP_SEGMENT` control message (the GSO segment size) after
/// `offset` bytes of others; returns its length.
fn write_segment(buf: &mut [u64; CMSG_SPACE / 8], offset: usize, segment: usize) -> usize {
    let data_len = std::mem::size_of::<u16>();
    // SAFETY: `offset` is the CMSG_SPACE of the pktinfo message written
    // before (0 or 40 bytes), and 40 + CMSG_SPACE(2) = 64 <= CMSG_SPACE;
    // the header is 8-aligned there and the data goes where CMSG_DATA puts it.
    unsafe {
        let ptr = buf.as_mut_ptr().cast::<u8>().add(offset);
        let space = libc::CMSG_SPACE(data_len as u32) as usize;
        debug_assert!(offset + space <= CMSG_SPACE);
        std::ptr::write_bytes(ptr, 0, space);
        let cmsg = ptr.cast::<libc::cmsghdr>();
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        space
    }
}

/// The destination as a C socket address; returns its length.
fn write_addr(storage: &mut libc::sockaddr_storage, dest: SocketAddr, v6_socket: bool) -> u32 {
    let dest = match dest {
        SocketAddr::V4(v4) if v6_socket => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        d => d,
    };
    match dest {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

/// The control message choosing the source address; returns its length.
fn write_pktinfo(buf: &mut [u64; CMSG_SPACE / 8], src: IpAddr, v6_socket: bool) -> usize {
    let ptr = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` is CMSG_SPACE bytes, 8-aligned, larger than
    // CMSG_SPACE(sizeof(in6_pktinfo)) = 40; the header and data are written
    // where CMSG_DATA puts them.
    unsafe {
        let v4_on_v4 = matches!(src, IpAddr::V4(_)) && !v6_socket;
        let (level, kind, data_len) = if v4_on_v4 {
            (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                std::mem::size_of::<libc::in_pktinfo>(),
            )
        } else {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                std::mem::size_of::<libc::in6_pktinfo>(),
            )
        };
        let space = libc::CMSG_SPACE(data_len as u32) as usize;
        std::ptr::write_bytes(ptr, 0, space);
        let cmsg = ptr.cast::<libc::cmsghdr>();
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        let data = libc::CMSG_DATA(cmsg);
        if v4_on_v4 {
            let IpAddr::V4(v4) = src else { unreachable!() };
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(data.cast(), info);
        } else {
            let v6 = match src {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                ipi6_ifindex: 0,
            };
            std::ptr::write_unaligned(data.cast(), info);
        }
        space
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A real batch through the kernel: every datagram arrives, in order,
    /// at its own destination, from the chosen source address.
    #[test]
    fn a_batch_reaches_every_destination() {
        let server = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let viewers: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for v in &viewers {
            v.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let outs: Vec<Outgoing> = (0..6u8)
            .map(|i| Outgoing {
                destination: viewers[i as usize % 3].local_addr().unwrap(),
                source_ip: Some("127.0.0.1".parse().unwrap()),
                contents: vec![i; 100 + i as usize],
            })
            .collect();
        let mut batch = Batch::new(false, 1);
        let sent = batch.send(server.as_raw_fd(), &outs).unwrap();
        assert_eq!(sent, 6);
        for (k, v) in viewers.iter().enumerate() {
            for i in [k as u8, k as u8 + 3] {
                let mut buf = [0u8; 512];
                let (n, from) = v.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], &vec![i; 100 + i as usize][..]);
                assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
    }

    fn out(to: SocketAddr, fill: u8, len: usize) -> Outgoing {
        Outgoing {
            destination: to,
            source_ip: Some("127.0.0.1".parse().unwrap()),
            contents: vec![fill; len],
        }
    }

    #[test]
    fn runs_are_one_destination_one_size_with_a_shorter_last() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let outs = [
            out(a, 0, 1200),
            out(a, 0, 1200),
            out(a, 0, 700), // ends the run
            out(a, 0, 1200),
            out(a, 0, 1201), // larger than the run's size: a new run
            out(b, 0, 1201), // another destination
            out(b, 0, 100),
        ];
        let mut runs = Vec::new();
        gso_runs(&outs, 64, &mut runs);
        assert_eq!(runs, [3, 1, 1, 2]);
        gso_runs(&outs, 1, &mut runs);
        assert_eq!(runs, [1; 7]);
        gso_runs(&outs[..2], 2, &mut runs);
        assert_eq!(runs, [2]);
        // A run stops short of the message size limit.
        let big: Vec<Outgoing> = (0..60).map(|_| out(a, 0, 1200)).collect();
        gso_runs(&big, 64, &mut runs);
        assert_eq!(runs, [50, 10]);
    }

    /// Runs go out as GSO messages and arrive as the datagrams they were,
    /// in order, at a receiver that knows nothing of GSO.
    #[test]
    fn a_gso_run_arrives_as_separate_datagrams() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let viewers: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for v in &viewers {
            v.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let a = viewers[0].local_addr().unwrap();
        let b = viewers[1].local_addr().unwrap();
        let outs = [
            out(a, 1, 1100),
            out(a, 2, 1100),
            out(a, 3, 1100),
            out(a, 4, 300),
            out(b, 5, 900),
            out(b, 6, 900),
        ];
        let mut batch = Batch::new(false, 64);
        assert_eq!(batch.send(server.as_raw_fd(), &outs).unwrap(), 6);
        assert_eq!(batch.gso_segments, 64, "this kernel takes UDP GSO");
        assert_eq!(batch.runs, [4, 2]);
        for o in &outs {
            let v = if o.destination == a {
                &viewers[0]
            } else {
                &viewers[1]
            };
            let mut buf = [0u8; 4096];
            let (n, _) = v.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &o.contents[..]);
        }
    }
}
