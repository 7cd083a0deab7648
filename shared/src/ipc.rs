//! The master-worker channel: typed messages over a Unix socket pair.
//!
//! Each frame is a 4-byte big-endian length followed by that many bytes of
//! JSON (externally tagged enums: internally tagged ones buffer their content,
//! which would break the raw JSON payloads below). JSON keeps the format readable in `strace` and lets published payloads
//! ride along as raw JSON without re-encoding; the length prefix keeps framing
//! independent of the payload.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::Config;
use crate::metrics::FamilySnapshot;

/// Largest IPC frame; a bigger length prefix means a corrupt stream, not a big message.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// The file descriptor number at which a worker finds its listening socket.
pub const WORKER_LISTENER_FD: i32 = 3;
/// The file descriptor number at which a worker finds its end of the IPC socket pair.
pub const WORKER_IPC_FD: i32 = 4;

/// Why an IPC frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The socket failed.
    #[error("ipc i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a length beyond [`MAX_FRAME_BYTES`].
    #[error("ipc frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The frame was not a message of the expected type.
    #[error("ipc frame is not a valid message: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A cluster query as the master fans it out to its workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterCommand {
    /// Return the records of matching sockets, at most `limit` of them.
    Query {
        /// The filter, already validated by the master.
        filter: serde_json::Value,
        /// Most records to return.
        limit: usize,
    },
    /// Send a server event to every matching socket.
    Emit {
        /// The filter, already validated by the master.
        filter: serde_json::Value,
        /// Event name.
        event: String,
        /// Event payload.
        data: Box<RawValue>,
    },
    /// Disconnect every matching socket.
    Kick {
        /// The filter, already validated by the master.
        filter: serde_json::Value,
        /// Close reason the client sees.
        reason: String,
    },
    /// A long-polling request for a session of this node, from another node
    /// (sent to the owner node only).
    Poll {
        /// The owner worker's slot.
        slot: u16,
        /// The request.
        call: PollCall,
    },
    /// Merge `changes` into one socket's key-value session (`null` deletes a key).
    PatchSession {
        /// The socket.
        id: String,
        /// Keys to set or delete.
        changes: serde_json::Map<String, serde_json::Value>,
    },
}

/// A worker's answer to one [`ClusterCommand`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterReply {
    /// Matching socket records.
    Query {
        /// Records, as the admin API shows them.
        sockets: Vec<serde_json::Value>,
    },
    /// How many sockets the event was written to.
    Emit {
        /// Count of sockets reached.
        delivered: u64,
    },
    /// How many sockets were closed.
    Kick {
        /// Count of sockets closed.
        disconnected: u64,
    },
    /// The owner's answer to a [`ClusterCommand::Poll`], if it had a worker for it.
    Poll {
        /// The answer.
        answer: Option<PollAnswer>,
    },
    /// The socket's session after the patch, if this worker holds the socket.
    PatchSession {
        /// The updated session.
        session: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

impl ClusterReply {
    /// The empty answer to `command`, what a worker or node with no match replies.
    pub fn empty_for(command: &ClusterCommand) -> ClusterReply {
        match command {
            ClusterCommand::Query { .. } => ClusterReply::Query {
                sockets: Vec::new(),
            },
            ClusterCommand::Emit { .. } => ClusterReply::Emit { delivered: 0 },
            ClusterCommand::Kick { .. } => ClusterReply::Kick { disconnected: 0 },
            ClusterCommand::PatchSession { .. } => ClusterReply::PatchSession { session: None },
            ClusterCommand::Poll { .. } => ClusterReply::Poll { answer: None },
        }
    }

    /// Combines two parts of one answer (from two workers or two nodes).
    pub fn merge(self, other: ClusterReply) -> ClusterReply {
        match (self, other) {
            (ClusterReply::Query { mut sockets }, ClusterReply::Query { sockets: more }) => {
                sockets.extend(more);
                ClusterReply::Query { sockets }
            }
            (ClusterReply::Emit { delivered: a }, ClusterReply::Emit { delivered: b }) => {
                ClusterReply::Emit { delivered: a + b }
            }
            (ClusterReply::Kick { disconnected: a }, ClusterReply::Kick { disconnected: b }) => {
                ClusterReply::Kick {
                    disconnected: a + b,
                }
            }
            (
                ClusterReply::PatchSession { session: a },
                ClusterReply::PatchSession { session: b },
            ) => ClusterReply::PatchSession { session: a.or(b) },
            (ClusterReply::Poll { answer: a }, ClusterReply::Poll { answer: b }) => {
                ClusterReply::Poll { answer: a.or(b) }
            }
            (first, _) => first,
        }
    }
}

/// One node's answer to a cluster command: its workers' replies merged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReply {
    /// The answering node.
    pub node: String,
    /// The merged reply of the workers that answered.
    pub reply: ClusterReply,
    /// Workers that answered in time.
    pub workers_answered: usize,
    /// Workers that were asked.
    pub workers_expected: usize,
}

/// One request of Socket.IO's long-polling transport, for the worker that
/// owns its session (the session id names it; no sticky sessions needed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollCall {
    /// The session id.
    pub sid: String,
    /// `GET` (fetch what the socket wrote) or `POST` (the client's packets).
    pub method: String,
    /// A `POST`'s body (Engine.IO payloads are text).
    pub body: String,
}

/// The owner's HTTP answer to a [`PollCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollAnswer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// Body.
    pub body: String,
}

/// The tag a long-polling session id carries for its node: the first four
/// bytes of SHA-256 of the node id (masters find the owner node by it).
pub fn node_tag(node_id: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(node_id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Master to worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// First message: who the worker is and the node's effective configuration.
    Hello {
        /// Slot number, 1-based, stable across restarts of that slot.
        slot: u16,
        /// The node's settings.
        config: Box<Config>,
    },
    /// Stop accepting, close every socket with 1001, exit.
    Drain,
    /// Send your metrics; the reply carries the same `request`.
    MetricsRequest {
        /// Correlates the reply.
        request: u64,
    },
    /// A channel message for the local subscribers of `channel`.
    Deliver {
        /// The channel.
        channel: String,
        /// The published value, JSON text serialized once by the publisher.
        data: Box<RawValue>,
    },
    /// A long-polling request that reached another worker, for this one,
    /// which owns the session; answer with [`ToMaster::PollAnswer`].
    PollCall {
        /// Correlates the answer.
        request: u64,
        /// The slot of the worker that holds the client's connection; 0 when
        /// the client is on another node (the master answers it).
        from: u16,
        /// The request.
        call: PollCall,
    },
    /// Where another node's public port is, answering [`ToMaster::NodeAddress`].
    NodeAddress {
        /// The request being answered.
        request: u64,
        /// `host:port`, when the node is alive and says where it is.
        addr: Option<String>,
    },
    /// The owner's answer to a [`ToMaster::PollForward`] of this worker.
    PollAnswer {
        /// The forward being answered.
        request: u64,
        /// The answer.
        answer: PollAnswer,
    },
    /// A cluster query to evaluate on this worker's sockets.
    Cluster {
        /// Correlates the reply.
        request: u64,
        /// What to do.
        command: ClusterCommand,
    },
}

/// Worker to master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToMaster {
    /// The worker accepts connections.
    Ready,
    /// The worker's metric families, answering a [`ToWorker::MetricsRequest`].
    Metrics {
        /// The request being answered.
        request: u64,
        /// Every family of the worker's registry.
        families: Vec<FamilySnapshot>,
    },
    /// The first local socket subscribed to `channel`: route it here.
    Subscribe {
        /// The channel.
        channel: String,
    },
    /// The last local socket left `channel`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// Publish to every subscriber of `channel` on every worker.
    Publish {
        /// The channel.
        channel: String,
        /// The published value as JSON text.
        data: Box<RawValue>,
    },
    /// Users whose first socket on this worker opened, and whose last one closed:
    /// the master's index that lets a query for one user skip the other workers.
    Users {
        /// User ids (as [`crate::filter::user_id_index_key`] renders them) now present.
        joined: Vec<String>,
        /// User ids no longer present.
        left: Vec<String>,
    },
    /// A long-polling request for a session another worker owns, on this
    /// node or (with `node`, the owner node's tag) another: the master hands
    /// it to that worker, or to that node through the broker.
    PollForward {
        /// Correlates the answer ([`ToWorker::PollAnswer`]).
        request: u64,
        /// The owner's slot.
        slot: u16,
        /// The owner node's tag, when it is another node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<u32>,
        /// The request.
        call: PollCall,
    },
    /// Where is the node with this tag (its advertised public address)?
    NodeAddress {
        /// Correlates the answer.
        request: u64,
        /// The node's tag ([`node_tag`]).
        node: u32,
    },
    /// This worker's answer to a [`ToWorker::PollCall`].
    PollAnswer {
        /// The request being answered.
        request: u64,
        /// The slot that forwarded it; 0 for the master (a request from
        /// another node).
        to: u16,
        /// The answer.
        answer: PollAnswer,
    },
    /// A cluster command a socket's app hook asked for (an `emit` effect):
    /// the master runs it as it runs the admin API's, and answers nobody.
    Command {
        /// What to do.
        command: ClusterCommand,
    },
    /// The answer to a [`ToWorker::Cluster`].
    Cluster {
        /// The request being answered.
        request: u64,
        /// The worker's part of the answer.
        reply: ClusterReply,
    },
}

/// Encodes one message as a complete frame (length prefix included), so a
/// broadcast can encode once and write the same bytes to every worker.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, IpcError> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, message)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME_BYTES {
        return Err(IpcError::TooLarge(len));
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Writes one message.
pub async fn write_message<W, T>(writer: &mut W, message: &T) -> Result<(), IpcError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    writer.write_all(&encode(message)?).await?;
    Ok(())
}

/// Most bytes one [`write_queued`] gathers into a single write.
const GATHER_BYTES: usize = 64 * 1024;

/// How many bytes a side of the channel reads at once ([`reader`]).
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The reading end of a channel, buffered: a burst of messages that arrived
/// together is read with one syscall and decoded without yielding between
/// them. Why it matters: a worker's subscribers run only when its reading
/// loop yields, so reading a 50-message burst one message (and two syscalls)
/// at a time let them wake, and write to their clients, once per dribble
/// instead of once per burst (issue 19).
pub fn reader<R: AsyncRead>(read: R) -> tokio::io::BufReader<R> {
    tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, read)
}

/// Writes the frames queued on `queue` until it closes or a write fails,
/// gathering every frame already waiting (up to 64 KiB) into one write: a
/// burst crosses the channel in a few syscalls, and arrives together at the
/// other side ([`reader`]) instead of one message per wake.
pub async fn write_queued<W, F>(
    writer: &mut W,
    queue: &mut UnboundedReceiver<F>,
) -> Result<(), IpcError>
where
    W: AsyncWrite + Unpin,
    F: AsRef<[u8]>,
{
    let mut gathered = Vec::new();
    while let Some(frame) = queue.recv().await {
        if queue.is_empty() {
            // The common case of a lone message: no copy.
            writer.write_all(frame.as_ref()).await?;
            continue;
        }
        gathered.extend_from_slice(frame.as_ref());
        while gathered.len() < GATHER_BYTES {
            match queue.try_recv() {
                Ok(frame) => gathered.extend_from_slice(frame.as_ref()),
                Err(_) => break,
            }
        }
        writer.write_all(&gathered).await?;
        gathered.clear();
        if gathered.capacity() > GATHER_BYTES * 2 {
            // One huge message (a metrics snapshot) does not stay reserved.
            gathered = Vec::new();
        }
    }
    Ok(())
}

/// Reads one message; `Ok(None)` is a clean end of stream (the peer exited).
pub async fn read_message<R, T>(reader: &mut R) -> Result<Option<T>, IpcError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(IpcError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_survive_the_socket_pair() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let data = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        write_message(
            &mut a,
            &ToMaster::Publish {
                channel: "news".into(),
                data,
            },
        )
        .await
        .unwrap();
        write_message(&mut a, &ToMaster::Ready).await.unwrap();
        drop(a);
        match read_message::<_, ToMaster>(&mut b).await.unwrap() {
            Some(ToMaster::Publish { channel, data }) => {
                assert_eq!(channel, "news");
                assert_eq!(data.get(), r#"{"n":1}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            read_message::<_, ToMaster>(&mut b).await.unwrap(),
            Some(ToMaster::Ready)
        ));
        assert!(read_message::<_, ToMaster>(&mut b).await.unwrap().is_none());
    }

    /// Counts the writes that reach the socket.
    struct CountingWriter<W> {
        inner: W,
        writes: usize,
    }

    impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes += 1;
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Issue 19: a burst queued for the other side crosses in one write
    /// (not one per message) and is read back whole, in order, from one
    /// buffered read; a lone message still goes alone.
    #[tokio::test]
    async fn a_queued_burst_crosses_in_one_write_and_reads_back_in_order() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        for n in 0..50 {
            let data = RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap();
            tx.send(
                encode(&ToMaster::Publish {
                    channel: "news".into(),
                    data,
                })
                .unwrap(),
            )
            .unwrap();
        }
        drop(tx);
        let mut writer = CountingWriter {
            inner: a,
            writes: 0,
        };
        write_queued(&mut writer, &mut rx).await.unwrap();
        assert_eq!(writer.writes, 1, "50 small messages, one write");
        drop(writer);
        let mut read = reader(b);
        for n in 0..50 {
            match read_message::<_, ToMaster>(&mut read).await.unwrap() {
                Some(ToMaster::Publish { data, .. }) => {
                    assert_eq!(data.get(), format!(r#"{{"n":{n}}}"#))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(read_message::<_, ToMaster>(&mut read)
            .await
            .unwrap()
            .is_none());

        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tx.send(encode(&ToMaster::Ready).unwrap()).unwrap();
        drop(tx);
        let mut writer = CountingWriter {
            inner: a,
            writes: 0,
        };
        write_queued(&mut writer, &mut rx).await.unwrap();
        assert_eq!(writer.writes, 1);
    }

    #[tokio::test]
    async fn a_corrupt_length_is_refused_not_allocated() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_message::<_, ToMaster>(&mut b).await,
            Err(IpcError::TooLarge(_))
        ));
    }
}
