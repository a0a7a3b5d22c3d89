//! Thin wrappers over the Linux system interfaces the load generator needs: `recvmmsg`/
//! `sendmmsg` batches, `epoll`, an absolute `timerfd`, `CLOCK_MONOTONIC`, and `/proc`
//! readers, all through nix's safe wrappers (the same `recvmmsg`/`sendmmsg` calls as the
//! daemon's src/net/batch.rs). IPv4 only: everything the benchmark does is on 127.0.0.1.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::epoll::{self, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::resource::{self, Resource, UsageWho};
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrIn};
use nix::sys::time::{TimeSpec, TimeValLike};
use nix::sys::timerfd::{self, Expiration, TimerFlags, TimerSetTimeFlags};
use nix::time::ClockId;

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
/// Bytes per datagram buffer (the payload is capped well below this).
pub const BUF: usize = 2048;

/// Nanoseconds on `CLOCK_MONOTONIC`: the clock `timerfd` is armed on, as absolute times, and
/// the one `Instant` reads (which does not expose its value, so it cannot arm the timer).
pub fn now_ns() -> u64 {
    let ts = nix::time::clock_gettime(ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// CPU time (user + system) of this process, in nanoseconds (`getrusage(RUSAGE_SELF)`).
pub fn self_cpu_ns() -> u64 {
    resource::getrusage(UsageWho::RUSAGE_SELF).map_or(0, |ru| {
        (ru.user_time().num_microseconds() + ru.system_time().num_microseconds()) as u64 * 1000
    })
}

/// Clock ticks per second for `/proc/PID/stat` (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
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

/// Raises RLIMIT_NOFILE to its hard limit (10,000 allocations need 10,000 sockets); returns
/// the hard limit, 0 if it could not be read.
pub fn raise_nofile() -> u64 {
    match resource::getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, max)) => {
            let _ = resource::setrlimit(Resource::RLIMIT_NOFILE, max, max);
            max
        }
        Err(_) => 0,
    }
}

/// Per-CPU idle + iowait in clock ticks, from /proc/stat. Busy time is taken as the rest
/// of the wall time: idle time is exact (kept from the idle loop's own clock under NO_HZ),
/// while the user/system/softirq columns are sampled at the tick, which misses work done in
/// bursts shorter than a tick between idle periods (a relay at a few hundred µs per wakeup)
/// and so reads low.
pub fn cpu_idle_ticks() -> io::Result<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    // cpuN user nice system idle iowait irq softirq steal guest guest_nice
    let idle: Vec<u64> = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0)
        })
        .collect();
    if idle.is_empty() {
        return Err(io::Error::other("/proc/stat has no cpuN lines"));
    }
    Ok(idle)
}

/// Asks for precise timer wakeups (the default slack is 50 µs).
pub fn tight_timer_slack() {
    let _ = nix::sys::prctl::set_timerslack(1);
}

/// A batch of datagram buffers usable for both `recvmmsg` and `sendmmsg`: after a receive,
/// `lens` and `addrs` describe what arrived, so the same batch can be echoed back in place.
pub struct Mmsg {
    pub bufs: Box<[[u8; BUF]]>,
    pub lens: [usize; BATCH],
    addrs: [Option<SockaddrIn>; BATCH],
    /// Separate headers for each direction: nix's `sendmmsg` points a header's address at the
    /// caller's array, and `recvmmsg` does not point it back at the header's own slot.
    rx_hdrs: MultiHeaders<SockaddrIn>,
    tx_hdrs: MultiHeaders<SockaddrIn>,
}

impl Mmsg {
    pub fn new() -> Self {
        Mmsg {
            bufs: vec![[0u8; BUF]; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into()); BATCH],
            rx_hdrs: MultiHeaders::preallocate(BATCH, None),
            tx_hdrs: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Source address of received datagram `i` (or the destination set for sending).
    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        self.addrs[i].map_or(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), Into::into)
    }

    pub fn set_addr(&mut self, i: usize, a: SocketAddrV4) {
        self.addrs[i] = Some(a.into());
    }

    /// Receives up to `BATCH` datagrams without blocking; 0 when none is waiting.
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let mut bufs = self.bufs.iter_mut();
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(bufs.next().expect("BATCH buffers"))]);
        let msgs = match recvmmsg(
            fd.as_raw_fd(),
            &mut self.rx_hdrs,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(msgs) => msgs,
            // A previous send to a closed port reports ICMP unreachable here: skip it.
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNREFUSED) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut n = 0;
        for (i, m) in msgs.enumerate() {
            self.lens[i] = m.bytes;
            self.addrs[i] = m.address;
            n += 1;
        }
        Ok(n)
    }

    /// Sends datagrams `0..n` (`bufs[i][..lens[i]]` to `addr(i)`); returns how many went out
    /// before the socket would block.
    pub fn send(&mut self, fd: BorrowedFd<'_>, n: usize) -> io::Result<usize> {
        let n = n.min(BATCH);
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
            [IoSlice::new(if i < n {
                &self.bufs[i][..self.lens[i]]
            } else {
                &[]
            })]
        });
        let mut done = 0;
        let mut refused = 0;
        while done < n {
            match sendmmsg(
                fd.as_raw_fd(),
                &mut self.tx_hdrs,
                &iovs[done..n],
                &self.addrs[done..n],
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(sent) => done += sent.count(),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // A pending ICMP error from an earlier datagram: retry (bounded).
                Err(Errno::ECONNREFUSED) if refused < 4 => refused += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }
}

/// A level-triggered epoll set; tokens are `u64`s chosen by the caller. (Not mio: its
/// registrations are edge-triggered, and the loops here read a bounded number of batches per
/// wakeup and rely on being woken again for the rest.)
pub struct Epoll {
    ep: epoll::Epoll,
    events: Vec<EpollEvent>,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        Ok(Epoll {
            ep: epoll::Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            events: vec![EpollEvent::empty(); 256],
        })
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        Ok(self
            .ep
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))?)
    }

    /// Waits up to `timeout_ms` (negative: forever) and returns the ready tokens.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        let timeout = EpollTimeout::try_from(timeout_ms).unwrap_or(EpollTimeout::NONE);
        match self.ep.wait(&mut self.events, timeout) {
            Ok(n) => {
                out.extend(self.events[..n].iter().map(|e| e.data()));
                Ok(())
            }
            Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A `CLOCK_MONOTONIC` timerfd armed at absolute times (ns from [`now_ns`]).
pub struct TimerFd(timerfd::TimerFd);

impl TimerFd {
    pub fn new() -> io::Result<Self> {
        Ok(TimerFd(timerfd::TimerFd::new(
            timerfd::ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    pub fn set_abs(&self, at_ns: u64) {
        // An all-zero time would disarm the timer instead.
        let at_ns = at_ns.max(1);
        let at = TimeSpec::new((at_ns / 1_000_000_000) as _, (at_ns % 1_000_000_000) as _);
        let _ = self.0.set(
            Expiration::OneShot(at),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        );
    }

    /// Consumes the expiry count, so that the level-triggered epoll stops reporting it.
    pub fn clear(&self) {
        let _ = nix::unistd::read(self.0.as_fd(), &mut [0u8; 8]);
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

pub fn fd(s: &UdpSocket) -> BorrowedFd<'_> {
    s.as_fd()
}

pub fn local_v4(s: &UdpSocket) -> io::Result<SocketAddrV4> {
    match s.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(a),
        std::net::SocketAddr::V6(_) => Err(io::Error::other("IPv6 socket")),
    }
}
