//! Handing an accepted TCP connection from one worker to another of the same
//! node, through the master: a `SOCK_SEQPACKET` socket pair per worker (the
//! worker's end at [`WORKER_HANDOFF_FD`]), each message one datagram of
//! bytes with the connection's descriptor attached (`SCM_RIGHTS`).
//!
//! Why: a Socket.IO long-polling session lives on one worker, and the
//! WebSocket that upgrades it lands wherever the kernel puts it. Requests can
//! be forwarded as messages; a WebSocket cannot, so its connection moves to
//! the session's worker instead, with the bytes already read from it.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Where a worker finds its end of the hand-off socket pair.
pub const WORKER_HANDOFF_FD: i32 = 5;

/// The largest hand-off message: a request head (at most `--max-header-bytes`,
/// capped well below this) and what followed it.
pub const MAX_HANDOFF_BYTES: usize = 128 * 1024;

/// One end of a hand-off socket pair, driven by the tokio runtime.
#[derive(Debug)]
pub struct Handoff {
    socket: AsyncFd<OwnedFd>,
}

/// A new pair: (the master's end, the worker's end), both non-blocking and
/// close-on-exec (the spawn places the worker's end at fd 5 explicitly).
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

impl Handoff {
    /// Wraps one end (inside a tokio runtime).
    pub fn new(socket: OwnedFd) -> std::io::Result<Handoff> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        // SAFETY: an `OwnedFd` is an open descriptor owned by this value, and
        // its `as_raw_fd` returns that same descriptor until it is dropped,
        // which happens only with the `AsyncFd` that now owns it.
        let socket = unsafe { AsyncFd::register_with_interest(socket, interest) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Handoff { socket })
    }

    /// Sends `bytes` with `connection` attached; the peer gets its own
    /// descriptor of the same connection (the caller may close its own).
    pub async fn send(&self, bytes: &[u8], connection: BorrowedFd<'_>) -> std::io::Result<()> {
        let fds = [connection.as_raw_fd()];
        loop {
            let mut guard = self.socket.writable().await?;
            let sent = guard.try_io(|socket| {
                let control = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(
                    socket.as_raw_fd(),
                    &[IoSlice::new(bytes)],
                    &control,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match sent {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next message and its connection. A datagram without a descriptor
    /// (never sent by sockhive) is skipped.
    pub async fn recv(&self) -> std::io::Result<(Vec<u8>, OwnedFd)> {
        let mut buffer = vec![0u8; MAX_HANDOFF_BYTES];
        loop {
            let mut guard = self.socket.readable().await?;
            let received = guard.try_io(|socket| {
                let mut control = nix::cmsg_space!([RawFd; 1]);
                let mut slices = [IoSliceMut::new(&mut buffer)];
                let message = recvmsg::<()>(
                    socket.as_raw_fd(),
                    &mut slices,
                    Some(&mut control),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                if message.bytes == 0 && message.cmsgs().map_or(true, |mut c| c.next().is_none()) {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
                let mut connection = None;
                for cmsg in message.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        for fd in fds {
                            // SAFETY: the kernel just installed `fd` in this
                            // process for this message (SCM_RIGHTS); nothing
                            // else owns it, so it is wrapped exactly once.
                            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                            if connection.is_none() {
                                connection = Some(owned);
                            }
                        }
                    }
                }
                Ok((message.bytes, connection))
            });
            match received {
                Ok(Ok((length, Some(connection)))) => {
                    buffer.truncate(length);
                    return Ok((buffer, connection));
                }
                Ok(Ok((_, None))) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_and_its_bytes_arrive_on_the_other_end() {
        let (a, b) = pair().unwrap();
        let (a, b) = (Handoff::new(a).unwrap(), Handoff::new(b).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        a.send(
            b"GET / HTTP/1.1\r\n\r\n",
            std::os::fd::AsFd::as_fd(&accepted),
        )
        .await
        .unwrap();
        drop(accepted);
        let (bytes, fd) = b.recv().await.unwrap();
        assert_eq!(bytes, b"GET / HTTP/1.1\r\n\r\n");
        // The passed descriptor is the same connection.
        let mut moved = std::net::TcpStream::from(fd);
        use std::io::{Read, Write};
        moved.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }
}
