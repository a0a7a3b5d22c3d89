//! The worker's listening sockets (moved from worker.rs).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use mio::net::{TcpListener, UdpSocket};

use super::batch::BATCH;
use super::worker::Worker;
use crate::proto::{FiveTuple, Transport};
use crate::unix_now;

/// A listening socket of this worker.
pub enum Listener {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
    Tls(std::net::TcpListener),
}

pub(super) enum Bound {
    Udp(UdpSocket, SocketAddr),
    Stream(TcpListener, Transport),
}

impl Worker {
    /// Handles one `recvmmsg` batch from a client-facing UDP socket.
    pub(super) fn recv_from_client(&mut self, index: usize) -> io::Result<()> {
        let Some(Bound::Udp(socket, local)) = self.listeners.get(index) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let (fd, local) = (socket.as_raw_fd(), *local);
        let mut batch = self.recv_batch.take().expect("returned after every batch");
        let received = batch.recv(fd, local, 0);
        let count = *received.as_ref().unwrap_or(&0);
        let (now, unix) = (Instant::now(), unix_now());
        for i in 0..count {
            let (slot, len, from) = batch.get(i);
            let Some(client) = from else { continue };
            let tuple = FiveTuple {
                client,
                server: local,
                transport: Transport::Udp,
            };
            let reply = self.handle_client_message(now, unix, tuple, &slot[..len]);
            // Close freed relay sockets before the answer goes out, so a client told its
            // allocation is gone can have the port again at once.
            self.apply_events();
            if let Some(n) = reply {
                self.send_errors += self.send_batch.push(fd, client, &[&self.out_buf[..n]]);
            }
        }
        self.recv_batch = Some(batch);
        self.flush_sends();
        match received {
            Ok(n) if n == BATCH => Ok(()),
            Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn listener_fd(&self, server: SocketAddr) -> Option<RawFd> {
        self.listeners.iter().find_map(|listener| match listener {
            Bound::Udp(socket, addr) if *addr == server => Some(socket.as_raw_fd()),
            _ => None,
        })
    }
}
