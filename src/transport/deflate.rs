//! permessage-deflate (RFC 7692) on the broker's own socket, off unless
//! `[server] permessage_deflate` turns it on.
//!
//! Both directions are negotiated without context takeover (`server_no_context_takeover;
//! client_no_context_takeover`): every message is compressed and inflated on its own, so a
//! connection keeps no deflate state between messages. A zlib deflate context costs about
//! 256 KiB (and an inflate context about 40 KiB) at the default window; kept per
//! connection, 10,000 idle connections would hold gigabytes. Without takeover the contexts
//! belong to the worker thread ([`with_compressor`], [`with_decompressor`]), one per thread
//! and window size, reset before each message: per-connection deflate memory is zero while
//! idle, and while a message is handled, the message itself (bounded by
//! `limits.max_frame_bytes` inflated). The price is a lower ratio on streams of small, similar
//! messages, which context takeover would compress against each other.
//!
//! Messages under [`MIN_COMPRESSED`] bytes go uncompressed (RSV1 clear), which RFC 7692
//! allows per message: their deflate overhead would outweigh the saving.

use std::cell::RefCell;

use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_EXTENSIONS};
use actix_web::HttpRequest;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Messages shorter than this are sent uncompressed.
pub const MIN_COMPRESSED: usize = 128;

/// The deflate stream's empty stored block, which every message ends with and RFC 7692
/// §7.2.1 has the sender remove (and the receiver add back).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What was agreed with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The largest LZ77 window the server compresses with (`server_max_window_bits`).
    pub server_window_bits: u8,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` answer.
    pub fn response(&self) -> HeaderValue {
        const AGREED: &str =
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        if self.server_window_bits >= 15 {
            return HeaderValue::from_static(AGREED);
        }
        let bits = self.server_window_bits;
        HeaderValue::from_str(&format!("{AGREED}; server_max_window_bits={bits}"))
            .expect("ASCII: a constant and a number")
    }
}

/// The first permessage-deflate offer in the request that the broker can honour.
///
/// An offer is declined (and the next one considered) when it has an unknown or repeated
/// parameter, a malformed value, or asks for a server window under 9 bits (zlib's raw
/// deflate cannot compress with an 8-bit window). `client_max_window_bits` needs nothing:
/// the inflater always has the largest window, and the answer does not limit the client's.
pub fn negotiate(req: &HttpRequest) -> Option<Deflate> {
    req.headers()
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

/// One offer (`permessage-deflate; param; param=value`), if acceptable.
fn accept_offer(offer: &str) -> Option<Deflate> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_window_bits = 15;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                window_bits(bits)?;
            }
            ("server_max_window_bits", Some(bits)) => {
                server_window_bits = window_bits(bits)?;
                if server_window_bits < 9 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(Deflate { server_window_bits })
}

/// A window size parameter: 8 to 15.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

thread_local! {
    /// This thread's compressors, by window size (9 to 15).
    static COMPRESSORS: RefCell<Vec<Option<Compress>>> = const { RefCell::new(Vec::new()) };
    /// This thread's inflater (always the largest window).
    static DECOMPRESSOR: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's compressor for `window_bits`, reset for a new message.
fn with_compressor<R>(window_bits: u8, f: impl FnOnce(&mut Compress) -> R) -> R {
    COMPRESSORS.with(|cell| {
        let mut compressors = cell.borrow_mut();
        let slot = usize::from(window_bits);
        if compressors.len() <= slot {
            compressors.resize_with(slot + 1, || None);
        }
        let compressor = compressors[slot].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::fast(), false, window_bits)
        });
        compressor.reset();
        f(compressor)
    })
}

/// Runs `f` with this thread's inflater, reset for a new message.
fn with_decompressor<R>(f: impl FnOnce(&mut Decompress) -> R) -> R {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = slot.get_or_insert_with(|| Decompress::new_with_window_bits(false, 15));
        decompressor.reset(false);
        f(decompressor)
    })
}

/// The deflated `pieces` (one message, its parts in order), without the trailing empty
/// block.
pub fn compress<'a>(deflate: Deflate, pieces: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    with_compressor(deflate.server_window_bits, |compressor| {
        let mut out = Vec::new();
        for piece in pieces {
            deflate_into(compressor, piece, FlushCompress::None, &mut out);
        }
        deflate_into(compressor, &[], FlushCompress::Sync, &mut out);
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// Feeds all of `input` to the compressor, growing `out` as it fills.
fn deflate_into(
    compressor: &mut Compress,
    mut input: &[u8],
    flush: FlushCompress,
    out: &mut Vec<u8>,
) {
    loop {
        out.reserve(input.len() / 2 + 64);
        let before = compressor.total_in();
        // The in-memory compressor fails only on invalid parameters, which are fixed here.
        if compressor.compress_vec(input, out, flush).is_err() {
            return;
        }
        input = &input[(compressor.total_in() - before) as usize..];
        // Done when all the input is taken and the compressor left room unused: it had
        // nothing more to write (a full buffer may hide more output of the flush).
        if input.is_empty() && out.len() < out.capacity() {
            return;
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// Inflated, it is longer than the limit (1009).
    #[error("message too big once inflated")]
    TooBig,
    /// The bytes are not a deflate stream (1007).
    #[error("invalid compressed data")]
    Corrupt,
}

/// Inflates one message (its compressed payload, all fragments joined), refusing more than
/// `max` bytes of output.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    with_decompressor(|decompressor| {
        let mut out = Vec::with_capacity((compressed.len() * 3).clamp(64, max.max(64)));
        for input in [compressed, &TAIL[..]] {
            let mut input = input;
            loop {
                if out.len() == out.capacity() {
                    // Room up to one byte past the limit: a message of exactly `max` bytes
                    // is told from a longer one.
                    let room = (max + 1).saturating_sub(out.len());
                    if room == 0 {
                        return Err(InflateError::TooBig);
                    }
                    out.reserve(out.len().max(1024).min(room));
                }
                let before = decompressor.total_in();
                let status = decompressor
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                let consumed = (decompressor.total_in() - before) as usize;
                input = &input[consumed..];
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if matches!(status, Status::StreamEnd) {
                    break;
                }
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
                if consumed == 0 && out.len() < out.capacity() {
                    // No progress with room to spare: the input is cut short.
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(header: &str) -> Option<Deflate> {
        header.split(',').find_map(accept_offer)
    }

    #[test]
    fn offers_are_accepted_or_declined_by_their_parameters() {
        let full = Some(Deflate {
            server_window_bits: 15,
        });
        assert_eq!(offer("permessage-deflate"), full);
        assert_eq!(offer("permessage-deflate; client_max_window_bits"), full);
        assert_eq!(
            offer("permessage-deflate; server_no_context_takeover; client_max_window_bits=10"),
            full
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=10"),
            Some(Deflate {
                server_window_bits: 10
            })
        );
        // Declined: an 8-bit server window, an unknown or repeated parameter, a bad value,
        // another extension; the next acceptable offer wins.
        assert_eq!(offer("permessage-deflate; server_max_window_bits=8"), None);
        assert_eq!(offer("permessage-deflate; mystery"), None);
        assert_eq!(
            offer("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
            None
        );
        assert_eq!(offer("permessage-deflate; server_max_window_bits=16"), None);
        assert_eq!(offer("permessage-deflate; server_max_window_bits"), None);
        assert_eq!(offer("x-webkit-deflate-frame"), None);
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=8, permessage-deflate"),
            full
        );
    }

    #[test]
    fn a_message_survives_compression_at_every_window_and_a_bomb_is_refused() {
        let text = "{\"type\":\"room.message\",\"payload\":\"hello hello hello hello\"}".repeat(50);
        for bits in 9..=15 {
            let pieces = [text.as_bytes(), b"\n", text.as_bytes()];
            let out = compress(
                Deflate {
                    server_window_bits: bits,
                },
                pieces.into_iter(),
            );
            assert!(
                out.len() < text.len() / 2,
                "{bits} bits: {} bytes",
                out.len()
            );
            let back = inflate(&out, 1 << 20).unwrap();
            assert_eq!(back, format!("{text}\n{text}").into_bytes());
        }
        // 1 MiB of zeros deflates to a few kilobytes; inflating it past 64 KiB is refused.
        let bomb = compress(
            Deflate {
                server_window_bits: 15,
            },
            std::iter::once(&[0u8; 1 << 20][..]),
        );
        assert!(bomb.len() < 16 * 1024, "{} bytes", bomb.len());
        assert_eq!(inflate(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooBig));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff, 0x12], 1024),
            Err(InflateError::Corrupt)
        );
        assert_eq!(inflate(&[], 1024), Ok(Vec::new()));
        // Exactly the limit is allowed; one byte more is not.
        let limit = 100_000;
        let exact = compress(
            Deflate {
                server_window_bits: 15,
            },
            std::iter::once(&vec![b'x'; limit][..]),
        );
        assert_eq!(inflate(&exact, limit).map(|v| v.len()), Ok(limit));
        assert_eq!(inflate(&exact, limit - 1), Err(InflateError::TooBig));
    }
}
