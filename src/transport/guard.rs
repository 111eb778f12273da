//! Refuses an oversized or malformed WebSocket frame as soon as its header is read, and
//! invalid text as soon as its bytes arrive.
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
//! It refuses the framing violations a header shows the same way ([`FramingViolation`],
//! close code 1002): reserved bits, reserved opcodes, an unmasked client frame, a fragmented
//! or oversized control frame, a continuation with no message to continue, a new message
//! inside a fragmented one. actix-http checks these too, but its parser reports the error
//! before the frames already decoded from the same read, and actix-ws then drops those: a
//! good message sent just before a bad frame would be lost. Cut here, the good frames reach
//! the parser alone, are delivered, and only then does the error end the stream.
//!
//! Text messages are unmasked and checked for UTF-8 as their bytes pass (1007 at the read
//! that brings an invalid byte): the parser hands over a frame only when all of it has
//! arrived, and RFC 6455 §8.1 asks to fail the connection as soon as invalid text is seen.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// The longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// The first reserved bit, as [`Header::rsv`] holds it.
const RSV1: u8 = 0x40;

/// A stream adapter that fails as soon as a frame header exceeds the size limit.
pub struct FrameLimit<S> {
    inner: S,
    max_bytes: u64,
    tracker: HeaderTracker,
    state: GuardState,
    /// The start of a header the last read ended inside: held back until the header is
    /// whole and judged, so the parser never sees the first bytes of a header this guard
    /// refuses (at most [`MAX_HEADER`] bytes; empty unless a read split a header).
    withheld: Bytes,
    /// The inner stream has ended.
    ended: bool,
}

enum GuardState {
    Open,
    /// A header broke the limit or the framing rules; the bytes before it went out, and the
    /// next poll yields the error after one `Pending`, so actix-ws parses what it already
    /// has first (it would otherwise drop the whole buffer at the error).
    Refusing {
        yielded: bool,
        refusal: Refusal,
    },
    Done,
}

/// Why a header (or a text payload) ended the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    TooBig,
    Violation(&'static str),
    InvalidUtf8(std::str::Utf8Error),
}

impl Refusal {
    fn error(self) -> PayloadError {
        match self {
            Refusal::TooBig => PayloadError::Overflow,
            Refusal::Violation(what) => PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                FramingViolation(what),
            )),
            Refusal::InvalidUtf8(err) => {
                PayloadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, err))
            }
        }
    }
}

/// A frame header that breaks RFC 6455's framing rules; closes with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FramingViolation(pub &'static str);

impl<S> FrameLimit<S> {
    /// Accepts RSV1 on the first frame of a data message: permessage-deflate was negotiated.
    /// Such a message's text is checked once inflated, not here.
    pub fn compressed_messages(mut self, negotiated: bool) -> Self {
        self.tracker.deflate = negotiated;
        self
    }

    /// Wraps `inner`, refusing frames or messages over `max_bytes`.
    pub fn new(inner: S, max_bytes: usize) -> Self {
        FrameLimit {
            inner,
            max_bytes: u64::try_from(max_bytes).unwrap_or(u64::MAX),
            tracker: HeaderTracker::default(),
            state: GuardState::Open,
            withheld: Bytes::new(),
            ended: false,
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
            GuardState::Refusing {
                yielded: false,
                refusal,
            } => {
                this.state = GuardState::Refusing {
                    yielded: true,
                    refusal,
                };
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            GuardState::Refusing {
                yielded: true,
                refusal,
            } => {
                this.state = GuardState::Done;
                return Poll::Ready(Some(Err(refusal.error())));
            }
            GuardState::Open => {}
        }
        loop {
            if this.ended {
                // What is left of a header the connection ended inside: harmless, passed on.
                let rest = std::mem::take(&mut this.withheld);
                return Poll::Ready((!rest.is_empty()).then_some(Ok(rest)));
            }
            let chunk = match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => chunk,
                Poll::Ready(None) => {
                    this.ended = true;
                    continue;
                }
                other => return other,
            };
            let held = this.withheld.len();
            let data = if held == 0 {
                chunk.clone()
            } else {
                let mut joined = bytes::BytesMut::with_capacity(held + chunk.len());
                joined.extend_from_slice(&this.withheld);
                joined.extend_from_slice(&chunk);
                joined.freeze()
            };
            match this.tracker.feed(&chunk, this.max_bytes) {
                None => {
                    // Hold back a header this read ended inside.
                    let pass = data.len() - this.tracker.have;
                    this.withheld = data.slice(pass..);
                    if pass > 0 {
                        return Poll::Ready(Some(Ok(data.slice(..pass))));
                    }
                }
                Some((at, refusal)) => {
                    // `at` is 0 for a header that began in an earlier read: the withheld
                    // bytes are its start, and nothing of it is passed on.
                    let pass = if at == 0 { 0 } else { held + at };
                    this.withheld = Bytes::new();
                    if pass == 0 {
                        this.state = GuardState::Refusing {
                            yielded: true,
                            refusal,
                        };
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.state = GuardState::Refusing {
                        yielded: false,
                        refusal,
                    };
                    return Poll::Ready(Some(Ok(data.slice(..pass))));
                }
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
    /// The UTF-8 check of the text message in progress, if one is open.
    text: Option<Utf8Stream>,
    /// How the current frame's payload is checked: it belongs to a text message.
    text_frame: Option<TextFrame>,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
}

/// The text payload bytes of the current frame, followed as they pass.
struct TextFrame {
    mask: [u8; 4],
    /// Payload bytes of this frame seen so far.
    offset: u64,
    /// The message's last frame: its end must end a character too.
    fin: bool,
}

/// UTF-8 validation of a byte stream that arrives in pieces: RFC 6455 §8.1 asks to fail a
/// connection as soon as invalid text is seen, not when its frame is complete.
#[derive(Default)]
struct Utf8Stream {
    /// The start of a character the last piece ended inside (at most 3 bytes).
    carry: [u8; 4],
    carried: usize,
}

impl Utf8Stream {
    /// Checks the next bytes (`unmask` gives each one its clear value).
    fn feed(
        &mut self,
        bytes: &[u8],
        unmask: impl Fn(usize, u8) -> u8,
    ) -> Result<(), std::str::Utf8Error> {
        let mut block = [0u8; 260];
        for (n, piece) in bytes.chunks(256).enumerate() {
            let start = self.carried;
            block[..start].copy_from_slice(&self.carry[..start]);
            for (i, b) in piece.iter().enumerate() {
                block[start + i] = unmask(n * 256 + i, *b);
            }
            let filled = &block[..start + piece.len()];
            self.carried = 0;
            if let Err(e) = std::str::from_utf8(filled) {
                if e.error_len().is_some() {
                    return Err(e);
                }
                // A character cut at the end: keep its start for the next piece.
                let tail = &filled[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carried = tail.len();
            }
        }
        Ok(())
    }

    /// The message has ended: a character left unfinished is invalid.
    fn finish(&self) -> Result<(), std::str::Utf8Error> {
        std::str::from_utf8(&self.carry[..self.carried]).map(|_| ())
    }
}

impl HeaderTracker {
    /// Advances over `chunk`. `Some((n, why))`: a header starting at offset `n` of this
    /// chunk broke the limit or the framing rules (n is 0 when it began in an earlier chunk).
    fn feed(&mut self, chunk: &[u8], max: u64) -> Option<(usize, Refusal)> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.skipping > 0 {
                let rest = (chunk.len() - pos) as u64;
                let step = self.skipping.min(rest);
                self.skipping -= step;
                let payload = &chunk[pos..pos + step as usize];
                if let Some(err) = self.check_text(payload) {
                    // Cut inside the frame: the parser never gets all of it.
                    return Some((pos, Refusal::InvalidUtf8(err)));
                }
                pos += step as usize;
                if self.skipping == 0 {
                    if let Some(err) = self.end_text_frame() {
                        return Some((pos - 1, Refusal::InvalidUtf8(err)));
                    }
                }
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
            let header = parse_header(&self.header[..self.have]);
            self.have = 0;
            if let Some(refusal) = self.check(&header, max) {
                return Some((self.header_start, refusal));
            }
            self.skipping = header.len;
            if header.len == 0 {
                if let Some(err) = self.end_text_frame() {
                    return Some((self.header_start, Refusal::InvalidUtf8(err)));
                }
            }
        }
        if self.have > 0 {
            self.header_start = 0;
        }
        None
    }

    /// Whether a header is refused, and why; otherwise follows the message it belongs to.
    fn check(&mut self, h: &Header, max: u64) -> Option<Refusal> {
        let violation = |what| Some(Refusal::Violation(what));
        // RSV1 marks a compressed message when permessage-deflate is on; no extension
        // gives RSV2 or RSV3 a meaning.
        let compressed = h.rsv == RSV1 && self.deflate;
        if h.rsv != 0 && !compressed {
            return violation("a frame with reserved bits set");
        }
        if !h.masked {
            return violation("an unmasked frame from a client");
        }
        match h.opcode {
            3..=7 | 0xB..=0xF => violation("a frame with a reserved opcode"),
            // Only a message's first frame says it is compressed (RFC 7692 §6).
            0 | 8..=0xA if compressed => violation("RSV1 on a control or continuation frame"),
            // Control frames: whole, short, and never part of the message they may interrupt.
            8..=0xA if !h.fin => violation("a fragmented control frame"),
            8..=0xA if h.len > 125 => violation("a control frame longer than 125 bytes"),
            8..=0xA => None,
            _ if h.len > max => Some(Refusal::TooBig),
            // Text or binary: a message starts; without FIN more fragments follow.
            1 | 2 => {
                if self.message_total.is_some() {
                    return violation("a new message inside a fragmented one");
                }
                self.message_total = (!h.fin).then_some(h.len);
                self.text = (h.opcode == 1 && !compressed).then(Utf8Stream::default);
                self.start_text_frame(h);
                None
            }
            // Continuation: counts towards the open message.
            _ => {
                let Some(so_far) = self.message_total else {
                    return violation("a continuation frame with no message to continue");
                };
                let total = so_far.saturating_add(h.len);
                self.message_total = (!h.fin).then_some(total);
                if total > max {
                    return Some(Refusal::TooBig);
                }
                self.start_text_frame(h);
                None
            }
        }
    }
}

impl HeaderTracker {
    /// A data frame begins: its payload is checked when its message is text.
    fn start_text_frame(&mut self, h: &Header) {
        self.text_frame = self.text.is_some().then_some(TextFrame {
            mask: h.mask,
            offset: 0,
            fin: h.fin,
        });
    }

    /// Checks payload bytes of the current frame if it carries text.
    fn check_text(&mut self, payload: &[u8]) -> Option<std::str::Utf8Error> {
        let (Some(frame), Some(text)) = (&mut self.text_frame, &mut self.text) else {
            return None;
        };
        let (mask, offset) = (frame.mask, frame.offset);
        frame.offset += payload.len() as u64;
        text.feed(payload, |i, b| b ^ mask[((offset + i as u64) % 4) as usize])
            .err()
    }

    /// The current frame's payload has all passed: a final text frame must end a
    /// character.
    fn end_text_frame(&mut self) -> Option<std::str::Utf8Error> {
        let frame = self.text_frame.take()?;
        if !frame.fin {
            return None;
        }
        let text = self.text.take()?;
        text.finish().err()
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

/// What the tracker reads from a frame header.
struct Header {
    fin: bool,
    /// The three reserved bits.
    rsv: u8,
    opcode: u8,
    masked: bool,
    mask: [u8; 4],
    len: u64,
}

/// The fields of a complete header.
fn parse_header(header: &[u8]) -> Header {
    let len = match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(bytes)
        }
        n => u64::from(n),
    };
    let masked = header[1] & 0x80 != 0;
    let mut mask = [0u8; 4];
    if masked {
        mask.copy_from_slice(&header[header.len() - 4..]);
    }
    Header {
        fin: header[0] & 0x80 != 0,
        rsv: header[0] & 0x70,
        opcode: header[0] & 0x0f,
        masked,
        mask,
        len,
    }
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
        refusal(bytes, chunk, max).map(|(at, _)| at)
    }

    fn refusal(bytes: &[u8], chunk: usize, max: u64) -> Option<(usize, Refusal)> {
        let mut t = HeaderTracker::default();
        for (i, c) in bytes.chunks(chunk).enumerate() {
            if let Some((at, why)) = t.feed(c, max) {
                return Some((i * chunk + at, why));
            }
        }
        None
    }

    /// Runs the guard over `chunks`: the bytes it passes, and its error if any.
    async fn guard(chunks: Vec<Vec<u8>>) -> (Vec<u8>, Option<PayloadError>) {
        use futures_util::StreamExt;
        let inner = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, PayloadError>(Bytes::from(c))),
        );
        let mut limited = FrameLimit::new(inner, 1000);
        let mut passed = Vec::new();
        while let Some(item) = limited.next().await {
            match item {
                Ok(bytes) => passed.extend_from_slice(&bytes),
                Err(e) => return (passed, Some(e)),
            }
        }
        (passed, None)
    }

    #[actix_rt::test]
    async fn a_header_split_across_reads_is_held_back_until_it_is_judged() {
        let good = frame(true, 1, 10);
        let mut bad = frame(true, 1, 3);
        bad[0] |= 0x20; // RSV2
                        // The bad header's first byte ends the first read.
        let mut first = good.clone();
        first.push(bad[0]);
        let (passed, err) = guard(vec![first, bad[1..].to_vec()]).await;
        assert_eq!(passed, good, "the good frame whole, nothing of the bad one");
        assert!(matches!(err, Some(PayloadError::Io(_))), "{err:?}");
        // A good header split the same way passes whole, in order.
        let second = frame(true, 2, 4);
        let mut first = good.clone();
        first.extend_from_slice(&second[..3]);
        let (passed, err) = guard(vec![first, second[3..].to_vec()]).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(passed, [good, second].concat());
    }

    /// A masked frame carrying `clear` (mask 1, 2, 3, 4).
    fn masked(fin: bool, opcode: u8, clear: &[u8]) -> Vec<u8> {
        let mut f = header(fin, opcode, clear.len() as u64);
        f.extend(
            clear
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    }

    #[actix_rt::test]
    async fn invalid_text_is_refused_when_its_bytes_arrive_not_when_its_frame_ends() {
        let good = masked(true, 1, "héllo".as_bytes());
        // One text frame of 20 bytes: valid start, then 0xFF, sent in two reads; the
        // second read (the invalid byte on) never reaches the parser.
        let mut clear = b"abcdef".to_vec();
        clear.push(0xFF);
        clear.extend_from_slice(&[b'z'; 13]);
        let bad = masked(true, 1, &clear);
        let split = good.len() + 2 + 4 + 6; // header, mask, "abcdef"
        let stream = [good.clone(), bad].concat();
        let (passed, err) = guard(vec![stream[..split].to_vec(), stream[split..].to_vec()]).await;
        assert_eq!(passed, stream[..split]);
        match err {
            Some(PayloadError::Io(e)) => {
                assert!(e.get_ref().is_some_and(|i| i.is::<std::str::Utf8Error>()))
            }
            other => panic!("{other:?}"),
        }

        // A character split across reads and across fragments (with a ping between) is
        // valid; binary payloads are not checked.
        let euro = "€".as_bytes(); // 3 bytes
        let stream = [
            masked(false, 1, &euro[..1]),
            masked(true, 9, b"p"),
            masked(true, 0, &euro[1..]),
            masked(true, 2, &[0xFF, 0xFE]),
        ]
        .concat();
        for chunk in [1, 2, 5, 4096] {
            let chunks = stream.chunks(chunk).map(<[u8]>::to_vec).collect();
            let (passed, err) = guard(chunks).await;
            assert!(err.is_none(), "chunk {chunk}: {err:?}");
            assert_eq!(passed, stream);
        }

        // A message whose last frame ends inside a character: the frame never completes.
        let stream = [masked(false, 1, b"ok"), masked(true, 0, &euro[..2])].concat();
        let (passed, err) = guard(vec![stream.clone()]).await;
        assert!(
            passed.len() < stream.len(),
            "the last frame is not passed whole"
        );
        assert!(matches!(err, Some(PayloadError::Io(_))), "{err:?}");
    }

    #[test]
    fn framing_violations_are_cut_where_their_header_starts() {
        let good = frame(true, 1, 10);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut f = frame(true, 1, 3);
                    f[0] |= 0x40;
                    f
                },
                "reserved bits",
            ),
            (frame(true, 3, 0), "reserved opcode"),
            (frame(true, 0xB, 0), "reserved opcode"),
            (frame(false, 9, 0), "fragmented control"),
            (frame(true, 9, 126), "longer than 125"),
            (frame(true, 0, 5), "no message to continue"),
            (
                {
                    let mut f = frame(true, 1, 3);
                    f[1] &= 0x7f; // unmasked: the mask bytes are now payload
                    f.truncate(2);
                    f.extend_from_slice(b"abc");
                    f
                },
                "unmasked",
            ),
        ];
        for (bad, what) in cases {
            let mut stream = good.clone();
            stream.extend_from_slice(&bad);
            for chunk in [1, 3, 4096] {
                match refusal(&stream, chunk, 1000) {
                    Some((at, Refusal::Violation(msg))) => {
                        assert!(msg.contains(what), "{what}: {msg}");
                        // Every byte before the header passes; none of it does.
                        assert!(
                            at >= good.len() && at <= good.len() + MAX_HEADER,
                            "{what}, chunk {chunk}: cut at {at}"
                        );
                    }
                    other => panic!("{what}, chunk {chunk}: {other:?}"),
                }
            }
        }
        // A new message while one is fragmented.
        let mut stream = frame(false, 1, 5);
        let second = stream.len();
        stream.extend(frame(true, 2, 5));
        assert!(matches!(
            refusal(&stream, 4096, 1000),
            Some((at, Refusal::Violation(msg))) if at == second && msg.contains("inside a fragmented")
        ));
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
