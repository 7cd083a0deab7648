//! `sockhive-bench redis-ceiling` (issue 19's scaling model): how many
//! messages one redis-server thread relays per second, by the number of
//! subscriber connections each message goes to.
//!
//! Why this and not a sockhive run: in the Redis broker every publish is one
//! `PUBLISH` and every worker (of every node) with a subscriber on the channel
//! is one Redis subscriber connection, so the cluster-wide ceiling is Redis's
//! `PUBLISH` rate at that fan-out, whatever sockhive does around it. The
//! subscribers here only count bytes, and the publishers keep a window of
//! pipelined `PUBLISH`es in flight, the way a worker's publish queue does; so
//! redis-server, not the generator, is what runs out (its CPU is reported to
//! show it did).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procstat;

/// The channel every connection uses.
const CHANNEL: &str = "sockhive:ch:bench-ceiling";

/// One measured fan-out.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingRow {
    /// Subscriber connections on the channel.
    pub subscribers: usize,
    /// Messages Redis took per second.
    pub publishes_per_second: f64,
    /// Messages Redis wrote to subscribers per second.
    pub deliveries_per_second: f64,
    /// redis-server's CPU over the measurement, as a share of one core.
    pub redis_cpu_share: f64,
    /// redis-server CPU per publish, microseconds.
    pub redis_us_per_publish: f64,
    /// Whether every subscriber received every message by the end.
    pub all_delivered: bool,
}

/// `sockhive-bench redis-ceiling`'s flags (bench/run.sh redis-ceiling passes the paths).
#[derive(Debug, clap::Args)]
pub struct CeilingArgs {
    #[command(flatten)]
    paths: crate::RunPaths,
    /// redis-server's pid, for its CPU.
    #[arg(long)]
    redis_pid: u32,
    /// Subscriber connections to measure, one row each.
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 2, 8, 32])]
    subscribers: Vec<usize>,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// `PUBLISH`es in flight per publisher.
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Payload bytes per message (a sockhive envelope of a small chat message is ~150).
    #[arg(long, default_value_t = 150)]
    payload: usize,
    /// Measured seconds per row.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// One second each for 0 and 2 subscribers: for CI, so the tool keeps working.
    #[arg(long)]
    smoke: bool,
}

/// `*3 $7 message $<channel> $<payload>` as Redis sends it to a subscriber.
fn message_frame_len(payload: usize) -> usize {
    let bulk = |n: usize| 1 + n.to_string().len() + 2 + n + 2;
    4 + bulk("message".len()) + bulk(CHANNEL.len()) + bulk(payload)
}

fn publish_command(payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{CHANNEL}\r\n${}\r\n",
        CHANNEL.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads until at least `lines` RESP lines have arrived; returns all bytes read
/// (which may run past them).
async fn read_lines(stream: &mut TcpStream, lines: usize) -> std::io::Result<Vec<u8>> {
    let mut buffer = [0u8; 4096];
    let mut seen = Vec::new();
    while seen.iter().filter(|&&b| b == b'\n').count() < lines {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buffer[..n]);
    }
    Ok(seen)
}

/// Subscribes and counts the bytes that arrive after the confirmation.
async fn subscriber(redis: SocketAddr, received: Arc<AtomicU64>) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(redis).await?;
    let command = format!(
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{CHANNEL}\r\n",
        CHANNEL.len()
    );
    stream.write_all(command.as_bytes()).await?;
    // The confirmation: `*3 $9 subscribe $<n> <channel> :1`, six lines.
    let seen = read_lines(&mut stream, 6).await?;
    let confirmation = seen
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(5)
        .map_or(seen.len(), |(i, _)| i + 1);
    received.fetch_add((seen.len() - confirmation) as u64, Ordering::Relaxed);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Bytes the subscribers may lag behind what was published: Redis closes a
/// subscriber whose output buffer passes 32 MiB, which would lose messages
/// for a reason that is the generator's, not Redis's.
const MAX_LAG_BYTES: u64 = 4 << 20;

/// What the publishers need to know about the subscribers to stay in step.
#[derive(Clone)]
struct Audience {
    subscribers: u64,
    frame: u64,
    received: Arc<AtomicU64>,
}

impl Audience {
    fn lag(&self, published: u64) -> u64 {
        (published * self.subscribers * self.frame)
            .saturating_sub(self.received.load(Ordering::Relaxed))
    }
}

/// Keeps `window` publishes in flight until `stop`; counts the answered ones.
async fn publisher(
    redis: SocketAddr,
    command: Arc<Vec<u8>>,
    window: usize,
    published: Arc<AtomicU64>,
    audience: Audience,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(redis).await?;
    let batch: Vec<u8> = command.repeat(window);
    let mut buffer = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if audience.lag(published.load(Ordering::Relaxed)) > MAX_LAG_BYTES {
            tokio::task::yield_now().await;
            continue;
        }
        stream.write_all(&batch).await?;
        // Each answer is one `:<n>\r\n` line.
        let mut answered = 0;
        while answered < window {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            answered += buffer[..n].iter().filter(|&&b| b == b'\n').count();
        }
        published.fetch_add(window as u64, Ordering::Relaxed);
    }
    Ok(())
}

async fn measure(args: &CeilingArgs, subscribers: usize) -> std::io::Result<CeilingRow> {
    let redis = args.paths.redis;
    let received = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..subscribers)
        .map(|_| tokio::spawn(subscriber(redis, received.clone())))
        .collect();
    // Bounded wait until Redis lists every subscriber.
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscriber_count(redis).await? < subscribers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let command = Arc::new(publish_command(&vec![b'x'; args.payload]));
    let frame = message_frame_len(args.payload) as u64;
    let audience = Audience {
        subscribers: subscribers as u64,
        frame,
        received: received.clone(),
    };
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..args.publishers.max(1))
        .map(|_| {
            tokio::spawn(publisher(
                redis,
                command.clone(),
                args.window.max(1),
                published.clone(),
                audience.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // A second of warm-up, then the measured span.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, p0, r0, t0) = (
        procstat::sample_tree(&[args.redis_pid]).cpu_seconds,
        published.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let (cpu1, p1, r1, elapsed) = (
        procstat::sample_tree(&[args.redis_pid]).cpu_seconds,
        published.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.map_err(std::io::Error::other)??;
    }
    // Everything published must reach every subscriber (bounded wait).
    let total = published.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < total * frame * subscribers as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_delivered = received.load(Ordering::Relaxed) == total * frame * subscribers as u64;
    if !all_delivered {
        eprintln!(
            "[redis-ceiling] {subscribers} subscribers received {} bytes of the {} published",
            received.load(Ordering::Relaxed),
            total * frame * subscribers as u64
        );
    }
    for reader in readers {
        reader.abort();
    }
    let publishes = (p1 - p0) as f64;
    Ok(CeilingRow {
        subscribers,
        publishes_per_second: publishes / elapsed,
        deliveries_per_second: (r1 - r0) as f64 / frame as f64 / elapsed,
        redis_cpu_share: (cpu1 - cpu0) / elapsed,
        redis_us_per_publish: if publishes > 0.0 {
            (cpu1 - cpu0) * 1e6 / publishes
        } else {
            0.0
        },
        all_delivered,
    })
}

/// `PUBSUB NUMSUB` of the channel.
async fn subscriber_count(redis: SocketAddr) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect(redis).await?;
    let command = format!(
        "*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{CHANNEL}\r\n",
        CHANNEL.len()
    );
    stream.write_all(command.as_bytes()).await?;
    // `*2 $<n> <channel> :<count>`: the count is the last line.
    let seen = read_lines(&mut stream, 4).await?;
    let text = String::from_utf8_lossy(&seen);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

/// Runs every row and prints (and writes) the table.
pub fn main(mut args: CeilingArgs) -> ExitCode {
    if args.smoke {
        args.seconds = 1.0;
        args.subscribers = vec![0, 2];
    }
    let Some(runtime) = crate::outputs::generator_runtime("redis-ceiling") else {
        return ExitCode::FAILURE;
    };
    // redis-server on one core, the generator on another: the row then shows
    // one Redis command thread's ceiling, not what was left of a shared core.
    let pinning = crate::pinning::Pinning::plan();
    if let Some(p) = &pinning {
        if let Err(e) = p.pin(&[args.redis_pid]) {
            eprintln!("[redis-ceiling] not pinned: {e}");
        }
    }
    let mut rows = Vec::new();
    for &k in &args.subscribers {
        match runtime.block_on(measure(&args, k)) {
            Ok(row) => {
                eprintln!("[redis-ceiling] {row:?}");
                rows.push(row);
            }
            Err(e) => {
                eprintln!("[redis-ceiling] {k} subscribers: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(p) = &pinning {
        p.unpin(&[args.redis_pid]);
    }
    let stamp = crate::utc_stamp();
    let mut md = format!(
        "# Redis pub/sub ceiling\n\n{stamp}, {} cores. One redis-server ({}), {} publisher connections \
         with {} pipelined `PUBLISH`es in flight each, {}-byte payloads on one channel; subscribers \
         count bytes only; {}. {} s measured per row after 1 s of warm-up.\n\n\
         | subscriber connections | publishes/s | deliveries/s | redis-server CPU, share of a core | \
         redis CPU per publish, µs | one core's ceiling at that cost, publishes/s | every message reached every subscriber |\n|---|---|---|---|---|---|---|\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::command_output("redis-server", &["--version"]),
        args.publishers,
        args.window,
        args.payload,
        match &pinning {
            Some(p) => format!("redis-server pinned to CPU {}, the generator to CPU {}", p.server_cpus, p.generator_cpus),
            None => "not pinned (fewer than two CPUs)".to_string(),
        },
        args.seconds,
    );
    for row in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {} |\n",
            row.subscribers,
            row.publishes_per_second,
            row.deliveries_per_second,
            row.redis_cpu_share,
            row.redis_us_per_publish,
            if row.redis_us_per_publish > 0.0 {
                1e6 / row.redis_us_per_publish
            } else {
                0.0
            },
            if row.all_delivered { "yes" } else { "NO" },
        ));
    }
    let path = args.paths.out.join(format!("redis-ceiling-{stamp}.md"));
    if !crate::outputs::write_files("redis-ceiling", &[(path, md.as_str())]) {
        return ExitCode::FAILURE;
    }
    println!("{md}");
    if rows.iter().all(|r| r.all_delivered) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_is_counted_as_redis_writes_it() {
        let frame = format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{CHANNEL}\r\n$5\r\nhello\r\n",
            CHANNEL.len()
        );
        assert_eq!(message_frame_len(5), frame.len());
        let command = publish_command(b"hello");
        assert!(command.starts_with(b"*3\r\n$7\r\nPUBLISH\r\n"));
        assert!(command.ends_with(b"$5\r\nhello\r\n"));
    }
}
