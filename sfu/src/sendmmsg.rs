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

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use crate::engine::Outgoing;

/// Most datagrams per `sendmmsg` call (the kernel's UIO_MAXIOV is 1024).
pub const BATCH: usize = 64;

/// Room for one `in6_pktinfo` control message (the larger of the two).
const CMSG_SPACE: usize = 64;

/// Reusable headers for one batch.
pub struct Batch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u64; CMSG_SPACE / 8]>,
    /// Whether the socket is IPv6 (destinations then go as IPv6, v4-mapped).
    v6_socket: bool,
}

// SAFETY: the raw pointers inside the headers only ever point into this
// struct's own vectors, and are rebuilt before each use.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(v6_socket: bool) -> Batch {
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
            v6_socket,
        }
    }

    /// Sends as many of `outs` (at most [`BATCH`]) as the socket takes now.
    /// Returns how many left (from the front); `WouldBlock` when none.
    pub fn send(&mut self, fd: RawFd, outs: &[Outgoing]) -> io::Result<usize> {
        let n = outs.len().min(BATCH);
        for (i, out) in outs.iter().take(n).enumerate() {
            let addr_len = write_addr(&mut self.addrs[i], out.destination, self.v6_socket);
            let cmsg_len = match out.source_ip.filter(|ip| !ip.is_unspecified()) {
                Some(ip) => write_pktinfo(&mut self.cmsgs[i], ip, self.v6_socket),
                None => 0,
            };
            self.iovs[i] = libc::iovec {
                iov_base: out.contents.as_ptr() as *mut libc::c_void,
                iov_len: out.contents.len(),
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = addr_len;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = if cmsg_len > 0 {
                self.cmsgs[i].as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
            h.msg_controllen = cmsg_len as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of this batch and of
        // `outs`, which outlive the call; `n` headers are initialised.
        let sent = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as _, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
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
        let mut batch = Batch::new(false);
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
}
