//! The server side of RFC 6455 framing, as every socket speaks it.
//!
//! Why our own and not tungstenite's `WebSocketStream` (which the clients in
//! tests and bench still use): tungstenite keeps a read buffer and a write
//! buffer per connection for the connection's life, 1 KiB plus the largest
//! frame ever written, and an idle socket's memory is made of such buffers
//! (issue 19). Here an idle socket holds no buffer at all:
//!
//! - reads land in one buffer per worker thread ([`SCRATCH`]); a socket keeps
//!   bytes only while a frame is incomplete or frames wait behind the one
//!   returned, and frees them once they are used;
//! - frames to send are gathered only until they are written, so the
//!   frames of a burst leave in one write, and the buffer goes with them.
//!
//! What it does is what tungstenite's server side did, and the same errors
//! (tungstenite's types) reach the socket core: a frame over the payload
//! limit is refused from its header (before its payload is read), pings are
//! answered, a close is replied to and ends the stream, and every protocol
//! violation fails the connection. Autobahn|Testsuite (`tests/autobahn/`)
//! checks it case by case.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::wire::{Ending, Wire, LINGER};
use super::{linger, truncated, Transport, MAX_CLOSE_REASON};

/// How much one read takes at most; also the shared buffer's size.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// Where every socket of this thread reads into when it holds no
    /// unfinished frame: one buffer per worker, not one per socket.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// The limits of every socket's framing.
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    /// Largest message (and frame) accepted, in bytes (`--max-payload`).
    pub max_message: usize,
    /// Bytes of frames gathered before a write is attempted without waiting
    /// for the flush: a burst leaves in writes of about this size. While
    /// this much cannot be written the sink takes no more, so what a slow
    /// reader has not taken stays in the socket's send queue, under its
    /// budget, and the core sees the write stall.
    pub write_coalesce: usize,
}

/// Where the close handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Both ways open.
    Open,
    /// We sent a close frame; the peer's reply is still to come.
    SentOurs,
    /// The peer sent a close frame and ours is the reply: nothing more is read.
    Replied,
    /// Both close frames were exchanged.
    Done,
}

/// A server-side WebSocket over `S`: a [`Stream`] of the messages received and
/// a [`Sink`] of those to send, with the socket core's [`Wire`] ending.
#[derive(Debug)]
pub struct WebSocket<S> {
    stream: S,
    limits: WsLimits,
    /// Bytes read and not yet used (from `unread_at` on); unallocated while
    /// the socket is idle.
    unread: Vec<u8>,
    unread_at: usize,
    /// Encoded frames not yet written (from `unsent_at` on); unallocated
    /// once written.
    unsent: Vec<u8>,
    unsent_at: usize,
    /// A message arriving in fragments.
    fragments: Option<Box<Fragments>>,
    closing: Closing,
    /// A read failed (a protocol violation, an oversized frame, bad UTF-8, the
    /// connection gone): nothing more is read, and the core ends the socket.
    failed: bool,
}

/// The fragments of a message received so far.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be valid UTF-8 (text only): a message
    /// that cannot be valid fails at the fragment that shows it.
    checked: usize,
}

/// A frame's header, parsed.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload: usize,
}

impl<S> WebSocket<S> {
    /// A WebSocket over `stream`, whose 101 response was sent; `read_ahead`
    /// is what was read past the request's head (a client may send its first
    /// frame at once).
    pub fn new(stream: S, read_ahead: Vec<u8>, limits: WsLimits) -> WebSocket<S> {
        WebSocket {
            stream,
            limits,
            unread: read_ahead,
            unread_at: 0,
            unsent: Vec::new(),
            unsent_at: 0,
            fragments: None,
            closing: Closing::Open,
            failed: false,
        }
    }

    /// The connection underneath.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes held for this socket now (read ahead or unsent): zero when idle.
    pub fn buffered_capacity(&self) -> usize {
        self.unread.capacity()
            + self.unsent.capacity()
            + self.fragments.as_ref().map_or(0, |f| f.data.capacity())
    }

    fn unsent_len(&self) -> usize {
        self.unsent.len() - self.unsent_at
    }

    /// Appends one unmasked frame to the unsent bytes.
    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        let out = &mut self.unsent;
        out.reserve(10 + payload.len());
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= u16::MAX as usize => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
    }

    /// Appends a close frame (`None`: without status code).
    fn queue_close(&mut self, close: Option<(u16, &str)>) {
        let mut payload = Vec::with_capacity(2 + MAX_CLOSE_REASON);
        if let Some((code, reason)) = close {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(truncated(reason, MAX_CLOSE_REASON).as_bytes());
        }
        self.queue_frame(0x8, &payload);
    }

    fn unread_len(&self) -> usize {
        self.unread.len() - self.unread_at
    }

    /// Forgets the first `used` unread bytes, freeing the buffer once all are.
    fn consume_unread(&mut self, used: usize) {
        self.unread_at += used;
        if self.unread_at == self.unread.len() {
            self.unread = Vec::new();
            self.unread_at = 0;
        }
    }

    /// The next message in `bytes`, if a whole frame is there; how many bytes
    /// were used either way (control frames are answered here and consumed).
    fn next_in(&mut self, bytes: &mut [u8]) -> Result<(usize, Option<Message>), WsError> {
        let mut used = 0;
        loop {
            let Some(header) = self.header(&bytes[used..])? else {
                return Ok((used, None));
            };
            let end = used + header.len + header.payload;
            if bytes.len() < end {
                return Ok((used, None));
            }
            let payload = &mut bytes[used + header.len..end];
            unmask(payload, header.mask);
            used = end;
            if let Some(message) = self.on_frame(header, payload)? {
                return Ok((used, Some(message)));
            }
            if self.closing == Closing::Replied || self.closing == Closing::Done {
                return Ok((used, None));
            }
        }
    }

    /// Parses and checks a frame's header; `None` while it is incomplete.
    /// Everything a header alone can show is refused here, before the payload
    /// arrives: an oversized frame costs no memory.
    fn header(&self, bytes: &[u8]) -> Result<Option<Header>, WsError> {
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(WsError::Protocol(ProtocolError::NonZeroReservedBits));
        }
        let fin = first & 0x80 != 0;
        let opcode = OpCode::from(first & 0x0f);
        let (mut len, short) = (2, (second & 0x7f) as u64);
        let payload = match short {
            126 => {
                let Some(b) = bytes.get(2..4) else {
                    return Ok(None);
                };
                len += 2;
                u16::from_be_bytes([b[0], b[1]]) as u64
            }
            127 => {
                let Some(b) = bytes.get(2..10) else {
                    return Ok(None);
                };
                len += 8;
                u64::from_be_bytes(b.try_into().expect("8 bytes"))
            }
            n => n,
        };
        match opcode {
            OpCode::Control(control) => {
                if !fin {
                    return Err(WsError::Protocol(ProtocolError::FragmentedControlFrame));
                }
                if payload > 125 {
                    return Err(WsError::Protocol(ProtocolError::ControlFrameTooBig));
                }
                if let Control::Reserved(code) = control {
                    return Err(WsError::Protocol(ProtocolError::UnknownControlFrameType(
                        code,
                    )));
                }
            }
            OpCode::Data(Data::Reserved(code)) => {
                return Err(WsError::Protocol(ProtocolError::UnknownDataFrameType(code)));
            }
            OpCode::Data(_) => {
                if payload > self.limits.max_message as u64 {
                    return Err(WsError::Capacity(CapacityError::MessageTooLong {
                        size: payload.min(usize::MAX as u64) as usize,
                        max_size: self.limits.max_message,
                    }));
                }
            }
        }
        if second & 0x80 == 0 {
            return Err(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient));
        }
        let Some(mask) = bytes.get(len..len + 4) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask: mask.try_into().expect("4 bytes"),
            len: len + 4,
            payload: payload as usize,
        }))
    }

    /// One whole, unmasked frame: the message it completes, if any.
    fn on_frame(&mut self, header: Header, payload: &[u8]) -> Result<Option<Message>, WsError> {
        let data = match header.opcode {
            OpCode::Control(Control::Ping) => {
                // No pong once a close frame went out (RFC 6455 5.5.1).
                if self.closing == Closing::Open {
                    self.queue_frame(0xA, payload);
                }
                return Ok(Some(Message::Ping(Bytes::copy_from_slice(payload))));
            }
            OpCode::Control(Control::Pong) => {
                return Ok(Some(Message::Pong(Bytes::copy_from_slice(payload))));
            }
            OpCode::Control(Control::Close) => return self.on_close(payload).map(Some),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                unreachable!("refused with the header")
            }
            OpCode::Data(data) => data,
        };
        let text = match (data, self.fragments.as_mut()) {
            (Data::Continue, None) => {
                return Err(WsError::Protocol(ProtocolError::UnexpectedContinueFrame))
            }
            (Data::Continue, Some(fragments)) => {
                let size = fragments.data.len() + payload.len();
                if size > self.limits.max_message {
                    return Err(WsError::Capacity(CapacityError::MessageTooLong {
                        size,
                        max_size: self.limits.max_message,
                    }));
                }
                fragments.data.extend_from_slice(payload);
                fragments.check_utf8(header.fin)?;
                if !header.fin {
                    return Ok(None);
                }
                let whole = self.fragments.take().expect("fragments");
                return Ok(Some(whole.into_message()?));
            }
            (data, Some(_)) => {
                return Err(WsError::Protocol(ProtocolError::ExpectedFragment(data)))
            }
            (Data::Text, None) => true,
            (_, None) => false,
        };
        if !header.fin {
            let mut fragments = Box::new(Fragments {
                text,
                data: payload.to_vec(),
                checked: 0,
            });
            fragments.check_utf8(false)?;
            self.fragments = Some(fragments);
            return Ok(None);
        }
        let bytes = Bytes::copy_from_slice(payload);
        Ok(Some(if text {
            Message::Text(Utf8Bytes::try_from(bytes)?)
        } else {
            Message::Binary(bytes)
        }))
    }

    /// The peer's close frame: validated, answered (its code echoed, or 1002
    /// for a code no endpoint may send), and the end of reading.
    fn on_close(&mut self, payload: &[u8]) -> Result<Message, WsError> {
        let frame = match payload {
            [] => None,
            [_] => return Err(WsError::Protocol(ProtocolError::InvalidCloseSequence)),
            [high, low, reason @ ..] => {
                let reason = std::str::from_utf8(reason)?;
                Some(CloseFrame {
                    code: CloseCode::from(u16::from_be_bytes([*high, *low])),
                    reason: reason.into(),
                })
            }
        };
        match self.closing {
            Closing::Open => {
                let reply = match &frame {
                    Some(frame) if !frame.code.is_allowed() => {
                        Some((u16::from(CloseCode::Protocol), "Protocol violation"))
                    }
                    Some(frame) => Some((u16::from(frame.code), frame.reason.as_str())),
                    None => None,
                };
                let reply = reply.map(|(code, reason)| (code, reason.to_string()));
                self.queue_close(reply.as_ref().map(|(c, r)| (*c, r.as_str())));
                self.closing = Closing::Replied;
            }
            Closing::SentOurs => self.closing = Closing::Done,
            Closing::Replied | Closing::Done => {}
        }
        Ok(Message::Close(frame))
    }
}

impl Fragments {
    /// Fails as soon as the text so far cannot become valid UTF-8 (`fin`: it
    /// must be valid as it is).
    fn check_utf8(&mut self, fin: bool) -> Result<(), WsError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn into_message(self) -> Result<Message, WsError> {
        let bytes = Bytes::from(self.data);
        Ok(if self.text {
            Message::Text(Utf8Bytes::try_from(bytes)?)
        } else {
            Message::Binary(bytes)
        })
    }
}

/// XORs the client's mask out of `payload`, four bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes(chunk.try_into().expect("4 bytes")) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Writes the unsent frames; ready once all are written (the buffer then
    /// freed).
    fn poll_write_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.unsent_len() > 0 {
            let pending = &self.unsent[self.unsent_at..];
            match Pin::new(&mut self.stream).poll_write(cx, pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.unsent_at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.unsent = Vec::new();
        self.unsent_at = 0;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Reads once, into the thread's shared buffer. With no unfinished frame
    /// its bytes are used at once (what is left over is kept); otherwise
    /// they are appended to the unread bytes, which so grow only with what
    /// arrives: a header announcing a large frame reserves nothing for it,
    /// and a socket sending only such headers holds no more than it sent.
    /// `Ok(None)`: nothing to return yet.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>, WsError>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WsError::Io(e))),
                Poll::Ready(Ok(())) => {}
            }
            let filled = buf.filled().len();
            if filled == 0 {
                return Poll::Ready(self.eof());
            }
            let bytes = &mut scratch[..filled];
            if self.unread_len() > 0 {
                if self.unread_at > 0 {
                    self.unread.drain(..self.unread_at);
                    self.unread_at = 0;
                }
                self.unread.extend_from_slice(bytes);
                return Poll::Ready(Ok(None));
            }
            let (used, message) = self.next_in(bytes)?;
            if used < filled && matches!(self.closing, Closing::Open | Closing::SentOurs) {
                // Keep what follows: the rest of a frame, or frames behind
                // the message returned.
                self.unread = bytes[used..].to_vec();
                self.unread_at = 0;
            }
            Poll::Ready(Ok(message))
        })
    }

    /// The peer closed the connection.
    fn eof(&mut self) -> Result<Option<Message>, WsError> {
        match self.closing {
            Closing::Replied | Closing::Done => Err(WsError::ConnectionClosed),
            Closing::Open | Closing::SentOurs => Err(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake,
            )),
        }
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        loop {
            // Answers owed (a pong, the close reply) go out before more is read.
            if self.unsent_len() > 0 {
                match self.poll_write_unsent(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(WsError::Io(e)))),
                    Poll::Pending if self.closing == Closing::Replied => return Poll::Pending,
                    _ => {}
                }
            }
            if matches!(self.closing, Closing::Replied | Closing::Done) {
                return Poll::Ready(None);
            }
            if self.unread_len() > 0 {
                let mut unread = std::mem::take(&mut self.unread);
                let result = self.next_in(&mut unread[self.unread_at..]);
                self.unread = unread;
                let (used, message) = result?;
                self.consume_unread(used);
                if let Some(message) = message {
                    return Poll::Ready(Some(Ok(message)));
                }
                if matches!(self.closing, Closing::Replied | Closing::Done) {
                    self.unread = Vec::new();
                    self.unread_at = 0;
                    continue;
                }
            }
            match self.poll_read_some(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(message))) => return Poll::Ready(Some(Ok(message))),
                Poll::Ready(Ok(None)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let polled = this.poll_message(cx);
        if let Poll::Ready(Some(Err(_))) = polled {
            this.failed = true;
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = &mut *self;
        if this.unsent_len() >= this.limits.write_coalesce {
            match this.poll_write_unsent(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(WsError::Io(e))),
                Poll::Pending if this.unsent_len() >= this.limits.write_coalesce => {
                    return Poll::Pending
                }
                _ => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let this = &mut *self;
        if this.closing != Closing::Open {
            return Err(WsError::Protocol(ProtocolError::SendAfterClosing));
        }
        match message {
            Message::Text(text) => this.queue_frame(0x1, text.as_bytes()),
            Message::Binary(bytes) => this.queue_frame(0x2, &bytes),
            Message::Ping(bytes) => this.queue_frame(0x9, &bytes),
            Message::Pong(bytes) => this.queue_frame(0xA, &bytes),
            Message::Close(frame) => {
                let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                this.queue_close(close.as_ref().map(|(c, r)| (*c, r.as_str())));
                this.closing = Closing::SentOurs;
            }
            Message::Frame(_) => {
                return Err(WsError::Io(io::Error::other(
                    "raw frames are not sent by the server",
                )))
            }
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.poll_write_unsent(cx).map_err(WsError::Io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = &mut *self;
        if this.closing == Closing::Open {
            this.queue_close(None);
            this.closing = Closing::SentOurs;
        }
        match this.poll_write_unsent(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream)
                .poll_shutdown(cx)
                .map_err(WsError::Io),
            other => other.map_err(WsError::Io),
        }
    }
}

impl<S: Transport> Wire for WebSocket<S> {
    fn end(
        &mut self,
        close: Option<(u16, String)>,
        grace: Duration,
        ending: Ending,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.closing == Closing::Open {
                self.queue_close(close.as_ref().map(|(code, text)| (*code, text.as_str())));
                self.closing = Closing::SentOurs;
            }
            let sent =
                tokio::time::timeout(grace, std::future::poll_fn(|cx| self.poll_write_unsent(cx)))
                    .await;
            if ending == Ending::Abrupt {
                return;
            }
            if matches!(sent, Ok(Ok(()))) && !self.failed {
                // Wait for the client's close frame, then the lingering close.
                let _ = tokio::time::timeout(grace, async {
                    while let Some(Ok(_)) = self.next().await {}
                })
                .await;
            }
            linger(&mut self.stream, LINGER).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    const LIMITS: WsLimits = WsLimits {
        max_message: 1 << 16,
        write_coalesce: 4096,
    };

    fn pair() -> (WebSocket<DuplexStream>, DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 20);
        (WebSocket::new(server, Vec::new(), LIMITS), client)
    }

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// What the server wrote, as it arrives at the client: every byte
    /// available within a moment.
    async fn received(client: &mut DuplexStream) -> Vec<u8> {
        let mut out = vec![0; 1 << 16];
        let n = tokio::time::timeout(Duration::from_secs(1), client.read(&mut out))
            .await
            .expect("the server wrote")
            .unwrap();
        out.truncate(n);
        out
    }

    #[tokio::test]
    async fn an_idle_socket_holds_no_buffer_after_a_large_exchange() {
        let (mut ws, client) = pair();
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let big = "x".repeat(60_000);
        client.send(Message::text(big.clone())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(big.clone())
        );
        ws.send(Message::text(big.clone())).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text(big));
        assert_eq!(ws.buffered_capacity(), 0);
        // tungstenite's stream over TCP was 296 bytes, plus its buffers.
        let size = std::mem::size_of::<WebSocket<tokio::net::TcpStream>>();
        assert!(size <= 136, "{size}");
    }

    #[tokio::test]
    async fn frames_split_anywhere_or_sent_together_all_arrive() {
        let (client, server) = tokio::io::duplex(1 << 20);
        // The first frame was read with the request's head.
        let limits = WsLimits {
            max_message: 1 << 20,
            ..LIMITS
        };
        let mut reader = WebSocket::new(server, frame(0x81, b"ahead"), limits);
        let mut client = client;
        let mut bytes = frame(0x81, b"one");
        bytes.extend(frame(0x82, &[1, 2, 3]));
        bytes.extend(frame(0x01, "hé".as_bytes()));
        bytes.extend(frame(0x89, b"ping"));
        bytes.extend(frame(0x80, "llo".as_bytes()));
        let long = vec![7u8; 70_000];
        bytes.extend(frame(0x82, &long));
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(3) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(reader.next().await.unwrap().unwrap());
        }
        assert_eq!(
            got[..5],
            [
                Message::text("ahead"),
                Message::text("one"),
                Message::binary(vec![1, 2, 3]),
                Message::Ping(Bytes::from_static(b"ping")),
                Message::text("héllo"),
            ]
        );
        assert_eq!(got[5], Message::binary(long));
        let mut client = writer.await.unwrap();
        // The ping was answered.
        std::future::poll_fn(|cx| reader.poll_write_unsent(cx))
            .await
            .unwrap();
        assert_eq!(
            received(&mut client).await,
            [0x8a, 4, b'p', b'i', b'n', b'g']
        );
        assert_eq!(reader.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header() {
        let (mut ws, mut client) = pair();
        // Only the header: its payload never comes.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 20).to_be_bytes());
        client.write_all(&header).await.unwrap();
        let error = ws.next().await.unwrap().unwrap_err();
        assert!(
            matches!(
                error,
                WsError::Capacity(CapacityError::MessageTooLong {
                    size: 1_048_576,
                    max_size: 65_536
                })
            ),
            "{error:?}"
        );
        assert!(ws.next().await.is_none(), "nothing is read after a failure");
    }

    #[tokio::test]
    async fn a_large_frames_header_alone_reserves_no_room_for_it() {
        let limits = WsLimits {
            max_message: 1 << 20,
            ..LIMITS
        };
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut ws = WebSocket::new(server, Vec::new(), limits);
        let mut client = client;
        let mut bytes = frame(0x82, &vec![1u8; 1 << 20]);
        bytes.truncate(14 + 100);
        client.write_all(&bytes).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), ws.next()).await;
        assert!(waited.is_err(), "the frame is not complete");
        assert!(
            ws.buffered_capacity() < 64 * 1024,
            "{}",
            ws.buffered_capacity()
        );
    }

    #[tokio::test]
    async fn a_fragmented_message_over_the_limit_is_refused() {
        let (mut ws, mut client) = pair();
        let half = vec![0u8; 40_000];
        let mut bytes = frame(0x02, &half);
        bytes.extend(frame(0x80, &half));
        client.write_all(&bytes).await.unwrap();
        let error = ws.next().await.unwrap().unwrap_err();
        assert!(
            matches!(
                error,
                WsError::Capacity(CapacityError::MessageTooLong { size: 80_000, .. })
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn invalid_utf8_fails_at_the_fragment_that_shows_it() {
        let (mut ws, mut client) = pair();
        // A valid start, a character cut between fragments, then a byte no
        // UTF-8 text can contain; the final fragment never comes.
        let mut bytes = frame(0x01, b"ok \xce");
        bytes.extend(frame(0x00, b"\xbb "));
        bytes.extend(frame(0x00, b"\xff"));
        client.write_all(&bytes).await.unwrap();
        assert!(matches!(ws.next().await, Some(Err(WsError::Utf8(_)))));
    }

    #[tokio::test]
    async fn protocol_violations_fail_the_connection() {
        let cases: [(&[u8], &str); 7] = [
            (&[0x81, 0x00], "unmasked"),
            (&frame(0xC1, b"x"), "reserved bits"),
            (&frame(0x83, b"x"), "reserved data opcode"),
            (&frame(0x8B, b""), "reserved control opcode"),
            (&frame(0x09, b""), "fragmented ping"),
            (&frame(0x80, b"x"), "continuation without a start"),
            (&frame(0x88, b"\x03"), "a close payload of one byte"),
        ];
        for (bytes, why) in cases {
            let (mut ws, mut client) = pair();
            client.write_all(bytes).await.unwrap();
            let next = ws.next().await;
            assert!(
                matches!(next, Some(Err(WsError::Protocol(_)))),
                "{why}: {next:?}"
            );
        }
        let (mut ws, mut client) = pair();
        let mut bytes = frame(0x01, b"a");
        bytes.extend(frame(0x81, b"b"));
        client.write_all(&bytes).await.unwrap();
        assert!(matches!(
            ws.next().await,
            Some(Err(WsError::Protocol(ProtocolError::ExpectedFragment(_))))
        ));
        let (mut ws, mut client) = pair();
        let ping = frame(0x89, &[0; 126]);
        client.write_all(&ping).await.unwrap();
        assert!(matches!(
            ws.next().await,
            Some(Err(WsError::Protocol(ProtocolError::ControlFrameTooBig)))
        ));
    }

    #[tokio::test]
    async fn a_close_is_echoed_and_ends_the_stream() {
        let (mut ws, mut client) = pair();
        let mut bytes = frame(0x88, b"\x0f\xa0bye");
        // Nothing after a close is read.
        bytes.extend(frame(0x81, b"late"));
        client.write_all(&bytes).await.unwrap();
        let Some(Ok(Message::Close(Some(close)))) = ws.next().await else {
            panic!("a close");
        };
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (4000, "bye")
        );
        assert!(ws.next().await.is_none());
        assert_eq!(
            received(&mut client).await,
            [0x88, 5, 0x0f, 0xa0, b'b', b'y', b'e']
        );
        assert_eq!(ws.buffered_capacity(), 0);
        assert!(ws.send(Message::text("no")).await.is_err());
    }

    #[tokio::test]
    async fn a_close_code_no_endpoint_may_send_is_answered_with_1002() {
        for code in [1005u16, 1006, 1015, 999, 5000] {
            let (mut ws, mut client) = pair();
            client
                .write_all(&frame(0x88, &code.to_be_bytes()))
                .await
                .unwrap();
            assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));
            assert!(ws.next().await.is_none());
            let reply = received(&mut client).await;
            assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), 1002, "{code}");
        }
        let (mut ws, mut client) = pair();
        client
            .write_all(&frame(0x88, b"\x03\xe8\xff"))
            .await
            .unwrap();
        assert!(matches!(ws.next().await, Some(Err(WsError::Utf8(_)))));
    }

    #[tokio::test]
    async fn our_close_ends_when_the_client_answers() {
        let (mut ws, client) = pair();
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let peer = tokio::spawn(async move {
            let close = client.next().await;
            // tungstenite's client answers the close by itself.
            while client.next().await.is_some() {}
            close
        });
        let long = "é".repeat(100);
        tokio::time::timeout(
            Duration::from_secs(5),
            ws.end(Some((4001, long)), Duration::from_secs(2), Ending::Orderly),
        )
        .await
        .expect("the close completes");
        let Some(Ok(Message::Close(Some(close)))) = peer.await.unwrap() else {
            panic!("the client got the close");
        };
        assert_eq!(u16::from(close.code), 4001);
        assert!(close.reason.len() <= MAX_CLOSE_REASON);
    }

    #[tokio::test]
    async fn a_burst_leaves_in_few_writes() {
        let (mut ws, client) = pair();
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        for i in 0..50 {
            ws.feed(Message::text(format!("message {i}")))
                .await
                .unwrap();
        }
        // Nothing was written yet: the frames are under the coalescing size.
        assert!(ws.unsent_len() > 0);
        ws.flush().await.unwrap();
        assert_eq!(ws.buffered_capacity(), 0);
        for i in 0..50 {
            let message = client.next().await.unwrap().unwrap();
            assert_eq!(message, Message::text(format!("message {i}")));
        }
    }
}
