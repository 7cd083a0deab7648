//! Helpers shared by the fuzz targets: driving sockhive's async readers over
//! in-memory bytes, and splitting one fuzz input into several fields.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

/// Runs a future whose I/O is all in memory to completion. The readers here
/// never return `Pending`, so polling with a no-op waker cannot hang; a bound
/// on the polls turns a future that does wait (a bug in the target) into a
/// crash instead of a stuck fuzzer.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
    panic!("an in-memory future did not complete");
}

/// An `AsyncRead` over a byte slice that hands out at most a few bytes per
/// read (sizes taken from the input itself), so parsers that resume after a
/// partial read see their input split at every possible point, as over TCP.
pub struct TrickleReader<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next_size: usize,
}

impl<'a> TrickleReader<'a> {
    /// Reads `data` in pieces whose lengths cycle through `sizes` (0 counts
    /// as "everything left"; no sizes means one piece).
    pub fn new(data: &'a [u8], sizes: &'a [u8]) -> Self {
        TrickleReader {
            data,
            sizes,
            next_size: 0,
        }
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.data
    }
}

impl AsyncRead for TrickleReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let limit = match self.sizes.get(self.next_size % self.sizes.len().max(1)) {
            Some(0) | None => usize::MAX,
            Some(&size) => usize::from(size),
        };
        self.next_size = self.next_size.wrapping_add(1);
        let take = limit.min(buf.remaining()).min(self.data.len());
        let (now, later) = self.data.split_at(take);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

/// Splits `input` at the first `separator` byte: the part before it and the
/// part after (empty when the separator does not occur). Targets use it to
/// carry two fields, e.g. a filter and a record, in one input.
pub fn split_once(input: &[u8], separator: u8) -> (&[u8], &[u8]) {
    match input.iter().position(|&byte| byte == separator) {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[]),
    }
}
