//! A client connection to a STUN/TURN server over UDP, TCP or TLS: datagrams, or stream
//! frames cut by the client's `Framer` (RFC 8656 §12.5). The transactions on it (RFC 8489
//! §6.2: retransmissions over UDP, one send over streams) are turnpike-client's.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use turnpike_client::{Framer, MAX_FRAME};

enum Io {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// One connection (or, over UDP, one local socket talking to one server address).
pub struct Conn {
    io: Io,
    pub server: SocketAddr,
    pub local: SocketAddr,
    /// Stream bytes not yet handed out as frames.
    pending: Framer,
}

/// The local IP the system would use to reach `server` (a connected UDP socket sends nothing).
pub fn local_ip_toward(server: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(server)?;
    Ok(socket.local_addr()?.ip())
}

/// Describes a connect or I/O error the way an operator reads it.
pub fn describe_io(e: &io::Error, server: impl fmt::Display, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            format!("connection refused ({server}: nothing listening, or a firewall rejects)")
        }
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => timeout_reason(server, timeout),
        io::ErrorKind::ConnectionReset => format!("connection reset by {server}"),
        io::ErrorKind::UnexpectedEof => format!("{server} closed the connection"),
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
            format!("{server} unreachable: {e}")
        }
        _ => format!("{server}: {e}"),
    }
}

pub fn timeout_reason(server: impl fmt::Display, timeout: Duration) -> String {
    format!(
        "timeout (no answer from {server} in {}s)",
        trim_secs(timeout.as_secs_f64())
    )
}

fn trim_secs(secs: f64) -> String {
    let s = format!("{secs:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// A TLS error from the handshake or a read: certificate problems called out as such.
fn describe_tls(e: &io::Error, server: SocketAddr, timeout: Duration) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(cert)) => {
            format!("TLS: certificate error: {}", describe_cert_error(cert))
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("TLS: the server sent alert {alert:?}")
        }
        Some(other) => format!("TLS: {other}"),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            format!("TLS: {server} closed the connection during the handshake")
        }
        None => describe_io(e, server, timeout),
    }
}

/// Certificate errors in an operator's words, with the usual fix.
fn describe_cert_error(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match e {
        E::UnknownIssuer => "unknown issuer: not signed by a trusted CA (a self-signed or \
                             private-CA certificate needs --ca-file)"
            .to_owned(),
        // webpki's error inside `Other` has no public type here; its name is stable.
        E::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "the server certificate is a CA certificate (self-signed with CA:TRUE); \
             issue a leaf certificate with basicConstraints=CA:FALSE"
                .to_owned()
        }
        other => other.to_string(),
    }
}

impl Conn {
    /// A UDP socket on the local address toward `server` (unconnected, so ICMP errors do
    /// not end the probe early: a silent server reads as a timeout).
    pub fn udp(server: SocketAddr) -> io::Result<Conn> {
        let ip = local_ip_toward(server)?;
        let socket = UdpSocket::bind((ip, 0))?;
        Conn::udp_on(socket, server)
    }

    /// Talks to `server` from an existing UDP socket (the NAT test reuses one socket).
    pub fn udp_on(socket: UdpSocket, server: SocketAddr) -> io::Result<Conn> {
        let local = socket.local_addr()?;
        Ok(Conn {
            io: Io::Udp(socket),
            server,
            local,
            pending: Framer::new(),
        })
    }

    pub fn tcp(server: SocketAddr, timeout: Duration) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&server, timeout)
            .map_err(|e| describe_io(&e, server, timeout))?;
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map_err(|e| describe_io(&e, server, timeout))?;
        Ok(Conn {
            io: Io::Tcp(stream),
            server,
            local,
            pending: Framer::new(),
        })
    }

    /// Connects and completes the TLS handshake, so certificate errors show up here.
    pub fn tls(
        server: SocketAddr,
        name: ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Conn, String> {
        let mut stream = TcpStream::connect_timeout(&server, timeout)
            .map_err(|e| describe_io(&e, server, timeout))?;
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map_err(|e| describe_io(&e, server, timeout))?;
        let mut tls =
            rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
        let deadline = Instant::now() + timeout;
        while tls.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "timeout (no TLS handshake with {server} in {}s)",
                    trim_secs(timeout.as_secs_f64())
                ));
            }
            let _ = stream.set_read_timeout(Some(left));
            let _ = stream.set_write_timeout(Some(left));
            match tls.complete_io(&mut stream) {
                Ok((0, 0)) if tls.is_handshaking() => {
                    return Err(format!(
                        "TLS: {server} closed the connection during the handshake"
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(describe_tls(&e, server, timeout)),
            }
        }
        Ok(Conn {
            io: Io::Tls(Box::new(rustls::StreamOwned::new(tls, stream))),
            server,
            local,
            pending: Framer::new(),
        })
    }

    pub fn is_stream(&self) -> bool {
        !matches!(self.io, Io::Udp(_))
    }

    /// Sends one STUN message or ChannelData frame (already padded for streams).
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Udp(socket) => socket.send_to(frame, self.server).map(|_| ()),
            Io::Tcp(stream) => stream.write_all(frame),
            Io::Tls(stream) => {
                stream.write_all(frame)?;
                stream.flush()
            }
        }
    }

    /// The next datagram or frame from the server, or `None` once `deadline` passes.
    pub fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            if self.is_stream() {
                match self.pending.next_frame() {
                    Ok(Some(range)) => return Ok(Some(self.pending.data()[range].to_vec())),
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let read = match &mut self.io {
                Io::Udp(socket) => {
                    socket.set_read_timeout(Some(left))?;
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) if from == self.server => Ok(n),
                        Ok(_) => continue,
                        Err(e) => Err(e),
                    }
                }
                Io::Tcp(stream) => {
                    stream.set_read_timeout(Some(left))?;
                    stream.read(&mut buf)
                }
                Io::Tls(stream) => {
                    stream.sock.set_read_timeout(Some(left))?;
                    stream.read(&mut buf)
                }
            };
            match read {
                Ok(0) if self.is_stream() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ))
                }
                Ok(n) if self.is_stream() => self.pending.extend(&buf[..n]),
                Ok(n) => return Ok(Some(buf[..n].to_vec())),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// An I/O error on this connection, in words.
    pub fn describe(&self, e: &io::Error, timeout: Duration) -> String {
        match self.io {
            Io::Tls(_) => describe_tls(e, self.server, timeout),
            _ => describe_io(e, self.server, timeout),
        }
    }
}
