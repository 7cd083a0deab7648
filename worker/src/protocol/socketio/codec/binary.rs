//! Binary packets: reassembling a packet with its attachments.

use serde_json::Value;

use super::*;

// ---------------------------------------------------------------------------------------------
// Binary packets
// ---------------------------------------------------------------------------------------------

/// The JSON that stands for attachment `index` in a binary packet's payload, for building one.
pub fn placeholder_json(index: usize) -> String {
    format!("{{\"_placeholder\":true,\"num\":{index}}}")
}

/// Applies the real parser's rule: any object with `"_placeholder": true` stands for an
/// attachment and must carry an integer `num` below the announced count; other values are
/// searched recursively (the depth pre-scan bounds the recursion).
pub(super) fn check_placeholders(json: &str, attachments: usize) -> Result<(), PacketError> {
    let payload: Value = serde_json::from_str(json).map_err(PacketError::InvalidJson)?;
    if placeholders_valid(&payload, attachments) {
        Ok(())
    } else {
        Err(PacketError::InvalidPlaceholder)
    }
}

fn placeholders_valid(value: &Value, attachments: usize) -> bool {
    match value {
        Value::Object(fields) if fields.get("_placeholder") == Some(&Value::Bool(true)) => fields
            .get("num")
            .and_then(Value::as_u64)
            .is_some_and(|num| num < attachments as u64),
        Value::Object(fields) => fields
            .values()
            .all(|field| placeholders_valid(field, attachments)),
        Value::Array(items) => items
            .iter()
            .all(|item| placeholders_valid(item, attachments)),
        _ => true,
    }
}

/// A binary event or ack with all its attachments. sockhive relays binary packets intact: the
/// JSON keeps its placeholders and the attachments stay in order, ready for
/// [`BinaryPacket::header_frame`] plus one binary frame per attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPacket {
    /// `/` or the namespace the packet named.
    pub namespace: String,
    /// Event (with name and optional ack id) or ack.
    pub kind: BinaryKind,
    /// The whole JSON array as received, placeholders included.
    pub payload_json: String,
    /// The attachments' raw bytes, attachment `num` at index `num`.
    pub attachments: Vec<Vec<u8>>,
}

impl BinaryPacket {
    /// The arguments as JSON text (after the event name for events), e.g. to read a binary
    /// `publish` with [`ChannelRequest::from_event`]. Placeholders stay as they are.
    pub fn args(&self) -> Result<Vec<&str>, PacketError> {
        let mut elements = parse_array(&self.payload_json, PacketType::BinaryEvent, EVENT_SHAPE)?;
        if matches!(self.kind, BinaryKind::Event { .. }) && !elements.is_empty() {
            elements.remove(0);
        }
        Ok(elements)
    }

    /// The text frame announcing this packet, byte for byte what was received (with the Engine.IO
    /// prefix); send it, then each attachment as a binary frame, to relay the packet.
    pub fn header_frame(&self) -> String {
        let (sio_type, ack_id) = match &self.kind {
            BinaryKind::Event { ack_id, .. } => (b'5', *ack_id),
            BinaryKind::Ack { ack_id } => (b'6', Some(*ack_id)),
        };
        let mut out = start_frame(
            self.payload_json.len(),
            sio_type,
            Some(self.attachments.len()),
            &self.namespace,
            ack_id,
        );
        out.push_str(&self.payload_json);
        out
    }
}

/// Why binary assembly failed. The real server closes the connection for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    /// A binary frame (or `b` text frame) while no binary packet waits for attachments.
    #[error("got binary data when not reconstructing a packet")]
    UnexpectedAttachment,
    /// A Socket.IO text packet while a binary packet still waits for attachments.
    #[error("got plaintext data when reconstructing a packet")]
    TextWhileAssembling,
    /// A hand-built header announcing no attachments (the decoder never yields one).
    #[error("binary packet announces no attachments")]
    NoAttachments,
    /// Header plus attachments exceed the assembler's byte limit.
    #[error("binary packet exceeds {limit} bytes")]
    TooBig { limit: usize },
}

impl AssemblyError {
    /// The `reason` label of `sockhive_protocol_errors_total` for this failure.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            AssemblyError::TooBig { .. } => "too_big",
            _ => "bad_packet",
        }
    }
}

/// Holds one binary packet's text part until its attachments have arrived (spec 8). One per
/// connection: every decoded Socket.IO packet passes through [`BinaryAssembler::accept_packet`]
/// and every binary message through [`BinaryAssembler::accept_attachment`], which enforces the
/// rule that nothing is interleaved with a packet's attachments. Engine.IO pings and pongs may
/// still come between them; they never reach the assembler.
#[derive(Debug, Clone)]
pub struct BinaryAssembler {
    /// Cap on header bytes plus attachment bytes of the packet being assembled.
    max_assembled_bytes: usize,
    /// The packet waiting for attachments, if any.
    pending: Option<PendingBinary>,
}

#[derive(Debug, Clone)]
struct PendingBinary {
    packet: BinaryPacket,
    expected: usize,
    bytes: usize,
}

impl Default for BinaryAssembler {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ASSEMBLED_BYTES)
    }
}

impl BinaryAssembler {
    /// An idle assembler holding at most `max_assembled_bytes` for one packet, so a client cannot
    /// make the worker buffer more than that per connection.
    pub fn new(max_assembled_bytes: usize) -> Self {
        Self {
            max_assembled_bytes,
            pending: None,
        }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_assembling(&self) -> bool {
        self.pending.is_some()
    }

    /// Passes a decoded packet through: non-binary packets come back to be handled now; a binary
    /// header is kept (`Ok(None)`) until [`BinaryAssembler::accept_attachment`] completes it.
    pub fn accept_packet<'a>(
        &mut self,
        packet: SocketPacket<'a>,
    ) -> Result<Option<SocketPacket<'a>>, AssemblyError> {
        if self.pending.is_some() {
            return Err(AssemblyError::TextWhileAssembling);
        }
        let header = match packet.kind {
            PacketKind::Binary(header) => header,
            kind => {
                return Ok(Some(SocketPacket {
                    namespace: packet.namespace,
                    kind,
                }))
            }
        };
        if header.attachments == 0 {
            return Err(AssemblyError::NoAttachments);
        }
        let bytes = header.payload_json.len();
        if bytes > self.max_assembled_bytes {
            return Err(AssemblyError::TooBig {
                limit: self.max_assembled_bytes,
            });
        }
        self.pending = Some(PendingBinary {
            packet: BinaryPacket {
                namespace: packet.namespace.to_owned(),
                kind: header.kind,
                payload_json: header.payload_json.to_owned(),
                attachments: Vec::new(),
            },
            expected: header.attachments,
            bytes,
        });
        Ok(None)
    }

    /// Adds the next attachment; yields the packet once the last announced one arrived. After an
    /// error the assembler is idle again (the session closes the connection anyway).
    pub fn accept_attachment(
        &mut self,
        attachment: Vec<u8>,
    ) -> Result<Option<BinaryPacket>, AssemblyError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(AssemblyError::UnexpectedAttachment);
        };
        pending.bytes = pending.bytes.saturating_add(attachment.len());
        if pending.bytes > self.max_assembled_bytes {
            self.pending = None;
            return Err(AssemblyError::TooBig {
                limit: self.max_assembled_bytes,
            });
        }
        pending.packet.attachments.push(attachment);
        if pending.packet.attachments.len() < pending.expected {
            return Ok(None);
        }
        Ok(self.pending.take().map(|pending| pending.packet))
    }
}
