//! Writing sessions into Redis the way connect-redis does: `SET sess:<id> <json> EX 86400`.
//!
//! Why plain RESP over a socket instead of a client crate: seeding is a few
//! thousand pipelined SETs once per run, and this keeps the generator's
//! dependencies (and so its build on a 2-core machine) small.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::credentials::{Login, SESSION_TTL_SECONDS};

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Redis could not be reached or the connection broke.
    #[error("redis i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Redis answered something other than `+OK`.
    #[error("redis refused a command: {0}")]
    Refused(String),
}

/// Appends one RESP command (an array of bulk strings) to `out`.
fn encode_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// Counts complete `+OK` replies in `buffer`; an error reply is returned as text.
fn count_ok_replies(buffer: &[u8]) -> Result<usize, String> {
    let mut count = 0;
    for line in buffer.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        if line.starts_with(b"+OK") {
            count += 1;
        } else if line.starts_with(b"-") {
            return Err(String::from_utf8_lossy(line).trim().to_string());
        }
    }
    Ok(count)
}

/// Stores `logins` with connect-redis's key, value and TTL, pipelined in batches.
pub async fn seed_sessions(redis: SocketAddr, logins: &[Login]) -> Result<(), SeedError> {
    let mut stream = TcpStream::connect(redis).await?;
    let ttl = SESSION_TTL_SECONDS.to_string();
    for batch in logins.chunks(1000) {
        let mut out = Vec::with_capacity(batch.len() * 200);
        for login in batch {
            let (key, value) = (login.redis_key(), login.redis_value());
            encode_command(
                &mut out,
                &[
                    b"SET",
                    key.as_bytes(),
                    value.as_bytes(),
                    b"EX",
                    ttl.as_bytes(),
                ],
            );
        }
        stream.write_all(&out).await?;
        let mut replies = Vec::new();
        let mut chunk = [0u8; 8192];
        // Each reply is exactly "+OK\r\n": wait until all of this batch's have come.
        while replies.len() < batch.len() * 5 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(SeedError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            replies.extend_from_slice(&chunk[..n]);
            count_ok_replies(&replies).map_err(SeedError::Refused)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_resp_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b"v"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }

    #[test]
    fn counts_ok_and_reports_errors() {
        assert_eq!(count_ok_replies(b"+OK\r\n+OK\r\n"), Ok(2));
        assert!(count_ok_replies(b"+OK\r\n-ERR wrong\r\n").is_err());
    }
}
