//! Thin wrappers over the Linux syscalls the load generator needs: `recvmmsg`/`sendmmsg`
//! batches, `epoll`, an absolute `timerfd`, `CLOCK_MONOTONIC`, and `/proc` readers.
//! IPv4 only: everything the benchmark does is on 127.0.0.1.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
/// Bytes per datagram buffer (the payload is capped well below this).
pub const BUF: usize = 2048;

/// Nanoseconds on `CLOCK_MONOTONIC` (the clock `timerfd` and `Instant` use).
pub fn now_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) of this process, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1000
}

/// Clock ticks per second for `/proc/PID/stat` (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime of process `pid` (all its threads), in clock ticks.
pub fn proc_cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("bad /proc stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let num = |i: usize| -> io::Result<u64> {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other("bad /proc stat field"))
    };
    Ok(num(11)? + num(12)?)
}

/// CPU time of process `pid` in nanoseconds: the sum of `/proc/PID/task/*/schedstat` run
/// times (ns resolution) when available, else utime + stime from `/proc/PID/stat` (clock
/// ticks, 10 ms resolution at 100 Hz). Returns (ns, source).
pub fn proc_cpu_ns(pid: u32) -> io::Result<(u64, &'static str)> {
    let mut total = 0u64;
    let mut ok = false;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) else {
                continue;
            };
            if let Some(v) = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            {
                total += v;
                ok = true;
            }
        }
    }
    if ok {
        return Ok((total, "schedstat"));
    }
    let t = proc_cpu_ticks(pid)?;
    Ok((t * 1_000_000_000 / clock_ticks(), "stat"))
}

/// VmRSS of process `pid`, in bytes.
pub fn proc_rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let kb: u64 = v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .map_err(|_| io::Error::other("bad VmRSS"))?;
            return Ok(kb * 1024);
        }
    }
    Err(io::Error::other("no VmRSS"))
}

/// Raises RLIMIT_NOFILE to its hard limit (10,000 allocations need 10,000 sockets).
pub fn raise_nofile() -> u64 {
    let mut rl: libc::rlimit = unsafe { zeroed() };
    // SAFETY: valid pointers to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    rl.rlim_cur as u64
}

/// Asks for precise timer wakeups (the default slack is 50 µs).
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// A batch of datagram buffers usable for both `recvmmsg` and `sendmmsg`: after a receive,
/// `lens` and `addrs` describe what arrived, so the same batch can be echoed back in place.
pub struct Mmsg {
    pub bufs: Box<[[u8; BUF]]>,
    pub lens: [usize; BATCH],
    addrs: Box<[libc::sockaddr_in]>,
    iov: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl Mmsg {
    pub fn new() -> Self {
        let mut m = Mmsg {
            bufs: vec![[0u8; BUF]; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: vec![to_sockaddr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)); BATCH]
                .into_boxed_slice(),
            iov: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ]
            .into_boxed_slice(),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
            hdrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
        };
        // The boxes never move their heap storage, so these pointers stay valid.
        for i in 0..BATCH {
            m.iov[i].iov_base = m.bufs[i].as_mut_ptr().cast();
            let h = &mut m.hdrs[i].msg_hdr;
            h.msg_name = (&mut m.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_iov = &mut m.iov[i];
            h.msg_iovlen = 1;
        }
        m
    }

    /// Source address of received datagram `i` (or the destination set for sending).
    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        from_sockaddr(&self.addrs[i])
    }

    pub fn set_addr(&mut self, i: usize, a: SocketAddrV4) {
        self.addrs[i] = to_sockaddr(a);
    }

    /// Receives up to `BATCH` datagrams without blocking; 0 when none is waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iov[i].iov_len = BUF;
            self.hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            self.hdrs[i].msg_hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by `self`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                // A previous send to a closed port reports ICMP unreachable here: skip it.
                io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(n)
    }

    /// Sends datagrams `0..n` (`bufs[i][..lens[i]]` to `addr(i)`); returns how many went out
    /// before the socket would block.
    pub fn send(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        for i in 0..n {
            self.iov[i].iov_len = self.lens[i];
            self.hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            self.hdrs[i].msg_hdr.msg_flags = 0;
        }
        let mut done = 0;
        let mut refused = 0;
        while done < n {
            // SAFETY: headers `done..n` point at live buffers owned by `self`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr().add(done),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    // A pending ICMP error from an earlier datagram: retry (bounded).
                    io::ErrorKind::ConnectionRefused if refused < 4 => {
                        refused += 1;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            done += r as usize;
        }
        Ok(done)
    }
}

/// A level-triggered epoll set; tokens are `u64`s chosen by the caller.
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
        })
    }

    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid epoll fd and event pointer.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns the ready tokens.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        // SAFETY: `events` is a writable buffer of the given length.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(self.events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// A `CLOCK_MONOTONIC` timerfd armed at absolute times (ns from [`now_ns`]).
pub struct TimerFd {
    fd: RawFd,
}

impl TimerFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TimerFd { fd })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn set_abs(&self, at_ns: u64) {
        let at_ns = at_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec.
        unsafe {
            libc::timerfd_settime(
                self.fd,
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
    }

    pub fn clear(&self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a local u64.
        unsafe { libc::read(self.fd, (&mut v as *mut u64).cast(), 8) };
    }
}

impl Drop for TimerFd {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// A nonblocking UDP socket on `addr` with large kernel buffers.
pub fn udp_socket(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    let r = socket2::SockRef::from(&s);
    let _ = r.set_recv_buffer_size(4 << 20);
    let _ = r.set_send_buffer_size(4 << 20);
    Ok(s)
}

pub fn fd(s: &UdpSocket) -> RawFd {
    s.as_raw_fd()
}

pub fn local_v4(s: &UdpSocket) -> io::Result<SocketAddrV4> {
    match s.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(a),
        std::net::SocketAddr::V6(_) => Err(io::Error::other("IPv6 socket")),
    }
}
