//! Refuses an oversized WebSocket frame as soon as its header is read.
//!
//! actix-http's frame parser only compares a frame's length with its limit once the whole
//! frame has arrived, and actix-ws reads everything the socket offers into one buffer before
//! parsing. A peer that declares a 1 GiB frame and streams it would be buffered in full before
//! the 1009 close. [`FrameLimit`] sits between the HTTP payload and actix-ws: it follows the
//! frame headers in the raw byte stream (it never buffers or copies payload), and the moment a
//! header declares more than the limit, for one frame or for the running total of a
//! fragmented message, it ends the stream with [`PayloadError::Overflow`], which
//! [`super::TransportError`] turns into close code 1009.
//!
//! Everything else about framing (opcodes, masking, control frame rules) is still checked by
//! actix-http; this only tracks lengths.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// The longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// A stream adapter that fails as soon as a frame header exceeds the size limit.
pub struct FrameLimit<S> {
    inner: S,
    max_bytes: u64,
    tracker: HeaderTracker,
    state: GuardState,
}

enum GuardState {
    Open,
    /// A header broke the limit; the bytes before it went out, and the next poll yields
    /// the error after one `Pending`, so actix-ws parses what it already has first (it
    /// would otherwise drop the whole buffer at the error).
    Refusing {
        yielded: bool,
    },
    Done,
}

impl<S> FrameLimit<S> {
    /// Wraps `inner`, refusing frames or messages over `max_bytes`.
    pub fn new(inner: S, max_bytes: usize) -> Self {
        FrameLimit {
            inner,
            max_bytes: u64::try_from(max_bytes).unwrap_or(u64::MAX),
            tracker: HeaderTracker::default(),
            state: GuardState::Open,
        }
    }
}

impl<S> Stream for FrameLimit<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.state {
            GuardState::Done => return Poll::Ready(None),
            GuardState::Refusing { yielded: false } => {
                this.state = GuardState::Refusing { yielded: true };
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            GuardState::Refusing { yielded: true } => {
                this.state = GuardState::Done;
                return Poll::Ready(Some(Err(PayloadError::Overflow)));
            }
            GuardState::Open => {}
        }
        let chunk = match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => chunk,
            other => return other,
        };
        match this.tracker.feed(&chunk, this.max_bytes) {
            None => Poll::Ready(Some(Ok(chunk))),
            // Nothing of the offending header is passed on.
            Some(0) => {
                this.state = GuardState::Refusing { yielded: true };
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(allowed) => {
                this.state = GuardState::Refusing { yielded: false };
                Poll::Ready(Some(Ok(chunk.slice(..allowed))))
            }
        }
    }
}

/// Follows frame boundaries through a byte stream.
#[derive(Default)]
struct HeaderTracker {
    /// Payload bytes of the current frame still to pass.
    skipping: u64,
    /// The header read so far (headers can be split across reads).
    header: [u8; MAX_HEADER],
    have: usize,
    /// Where in the current chunk the header being read started (0 when it started in an
    /// earlier chunk).
    header_start: usize,
    /// Payload bytes of the fragmented message in progress, if one is open.
    message_total: Option<u64>,
}

impl HeaderTracker {
    /// Advances over `chunk`. `Some(n)`: a header starting at offset `n` of this chunk broke
    /// the limit (n is 0 when it began in an earlier chunk).
    fn feed(&mut self, chunk: &[u8], max: u64) -> Option<usize> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.skipping > 0 {
                let rest = (chunk.len() - pos) as u64;
                let step = self.skipping.min(rest);
                self.skipping -= step;
                pos += step as usize;
                continue;
            }
            if self.have == 0 {
                self.header_start = pos;
            }
            let need = header_len(&self.header[..self.have]);
            let take = (need - self.have).min(chunk.len() - pos);
            self.header[self.have..self.have + take].copy_from_slice(&chunk[pos..pos + take]);
            self.have += take;
            pos += take;
            // The length of the header is known only once its first two bytes are in.
            if self.have < header_len(&self.header[..self.have]) {
                continue;
            }
            let (fin, opcode, len) = parse_header(&self.header[..self.have]);
            self.have = 0;
            if self.over_limit(fin, opcode, len, max) {
                return Some(self.header_start);
            }
            self.skipping = len;
        }
        if self.have > 0 {
            self.header_start = 0;
        }
        None
    }

    fn over_limit(&mut self, fin: bool, opcode: u8, len: u64, max: u64) -> bool {
        if len > max {
            return true;
        }
        match opcode {
            // Text or binary: a message starts; without FIN more fragments follow.
            1 | 2 => {
                self.message_total = (!fin).then_some(len);
                false
            }
            // Continuation: counts towards the open message.
            0 => {
                let total = self.message_total.unwrap_or(0).saturating_add(len);
                self.message_total = (!fin).then_some(total);
                total > max
            }
            // Control frames do not belong to the message they may interrupt.
            _ => false,
        }
    }
}

/// How long a header is, judged from the bytes read so far (2 until those are in).
fn header_len(header: &[u8]) -> usize {
    if header.len() < 2 {
        return 2;
    }
    let masked = header[1] & 0x80 != 0;
    let extended = match header[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + if masked { 4 } else { 0 }
}

/// FIN, opcode and payload length of a complete header.
fn parse_header(header: &[u8]) -> (bool, u8, u64) {
    let fin = header[0] & 0x80 != 0;
    let opcode = header[0] & 0x0f;
    let len = match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(bytes)
        }
        n => u64::from(n),
    };
    (fin, opcode, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header (payload not included).
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = header(fin, opcode, len as u64);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    /// Feeds `bytes` in chunks of `chunk` bytes; where the stream was cut, if it was.
    fn run(bytes: &[u8], chunk: usize, max: u64) -> Option<usize> {
        let mut t = HeaderTracker::default();
        for (i, c) in bytes.chunks(chunk).enumerate() {
            if let Some(at) = t.feed(c, max) {
                return Some(i * chunk + at);
            }
        }
        None
    }

    #[test]
    fn frames_within_the_limit_pass_in_any_chunking() {
        let mut stream = frame(true, 1, 100);
        stream.extend(frame(true, 9, 4)); // ping
        stream.extend(frame(true, 2, 1000));
        stream.extend(frame(false, 1, 300));
        stream.extend(frame(true, 10, 0)); // pong inside a fragmented message
        stream.extend(frame(true, 0, 700));
        for chunk in [1, 2, 3, 7, 13, 64, 4096] {
            assert_eq!(run(&stream, chunk, 1000), None, "chunk {chunk}");
        }
    }

    #[test]
    fn an_oversized_header_is_refused_where_it_starts() {
        let good = frame(true, 1, 10);
        let mut stream = good.clone();
        stream.extend(header(true, 1, 1 << 30));
        for chunk in [1, 5, 16, 4096] {
            // Every byte before the header passes; none of what it announces does.
            let cut = run(&stream, chunk, 1000).expect("refused");
            assert!(
                cut >= good.len() && cut <= good.len() + MAX_HEADER,
                "chunk {chunk}: {cut}"
            );
        }
        assert_eq!(run(&stream, 4096, 1000), Some(good.len()));
        // 2^63 and the largest u64 are refused from the header alone.
        assert_eq!(run(&header(true, 2, u64::MAX), 4096, 1000), Some(0));
        assert_eq!(run(&header(true, 2, 1 << 63), 4096, 1000), Some(0));
    }

    #[test]
    fn a_fragmented_message_is_limited_by_its_running_total() {
        let mut stream = frame(false, 1, 600);
        stream.extend(frame(true, 9, 2));
        let second = stream.len();
        stream.extend(header(false, 0, 600));
        assert_eq!(run(&stream, 4096, 1000), Some(second));
        // A new message after a finished one starts counting again.
        let mut stream = frame(false, 1, 600);
        stream.extend(frame(true, 0, 400));
        stream.extend(frame(false, 2, 600));
        stream.extend(frame(true, 0, 400));
        assert_eq!(run(&stream, 4096, 1000), None);
    }
}
