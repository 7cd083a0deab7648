//! Binding the public port before any worker exists.
//!
//! The master owns every listening socket for its whole life and lends them
//! to workers by descriptor inheritance. In `reuseport` mode each worker slot
//! has its own `SO_REUSEPORT` socket: the kernel hashes connections evenly
//! over the slots, and when a slot's worker restarts, its socket (kept open
//! here) goes on queueing connections for the successor instead of resetting
//! them. In `shared` mode all workers accept from one socket.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    bind, getsockname, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, SockaddrStorage,
};
use sockhive_shared::config::AcceptMode;

/// Pending connections per socket; the kernel caps it at `somaxconn`.
const BACKLOG: i32 = 4096;

/// Why the public port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: nix::Error,
}

/// The public listening sockets of a node.
pub struct PublicListeners {
    mode: AcceptMode,
    sockets: Vec<OwnedFd>,
    local_addr: SocketAddr,
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> Result<OwnedFd, nix::Error> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

fn local_addr(fd: &OwnedFd) -> Result<SocketAddr, nix::Error> {
    let storage: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(fd))?;
    if let Some(v4) = storage.as_sockaddr_in() {
        return Ok(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = storage.as_sockaddr_in6() {
        return Ok(SocketAddr::V6((*v6).into()));
    }
    Err(nix::Error::EAFNOSUPPORT)
}

impl PublicListeners {
    /// Binds `addr` once per slot (`reuseport`) or once (`shared`). Port 0
    /// picks a free port for the first socket; the others join that port.
    pub fn bind(
        addr: SocketAddr,
        mode: AcceptMode,
        slots: u16,
    ) -> Result<PublicListeners, BindError> {
        let err = |source| BindError { addr, source };
        let reuse_port = mode == AcceptMode::Reuseport;
        let first = bind_one(addr, reuse_port).map_err(err)?;
        let local = local_addr(&first).map_err(err)?;
        let mut sockets = vec![first];
        if reuse_port {
            for _ in 1..slots {
                sockets.push(bind_one(local, true).map_err(err)?);
            }
        }
        Ok(PublicListeners {
            mode,
            sockets,
            local_addr: local,
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The socket a worker in `slot` (1-based) accepts on.
    pub fn for_slot(&self, slot: u16) -> BorrowedFd<'_> {
        match self.mode {
            AcceptMode::Shared => self.sockets[0].as_fd(),
            AcceptMode::Reuseport => self.sockets[(slot as usize - 1) % self.sockets.len()].as_fd(),
        }
    }

    /// Stops accepting: closes the master's copies (workers close theirs as they drain).
    pub fn close(&mut self) {
        self.sockets.clear();
    }

    /// True once [`PublicListeners::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.sockets.is_empty()
    }
}
