//! The TCP/TLS stream framer (`turnpike::proto::stream`; the daemon's `net::stream`): a byte
//! stream cut into arbitrary reads must yield exactly the frames (and the error, at the same
//! place) that framing the whole stream at once yields, the framer must never hold more
//! than one partial frame once drained, and every frame must be something the server can
//! classify.
//!
//! Input: byte 0 = how to cut the stream (0: one read; else reads of 1..=4*b0 bytes from a
//! PRNG seeded by byte 1), then the stream itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike::net::stream::{frame_len, FrameError, Framer, MAX_FRAME};
use turnpike::proto::wire;

/// Frames of the whole stream at once: the frames, then the error if the stream went bad.
fn oneshot(stream: &[u8]) -> (Vec<&[u8]>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match frame_len(&stream[at..]) {
            Ok(Some(len)) => {
                assert!(len > 0, "empty frame");
                frames.push(&stream[at..at + len]);
                at += len;
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fn check_frame(frame: &[u8]) {
    assert!(frame.len() <= MAX_FRAME + 3);
    match frame[0] {
        0x40..=0x7F => {
            let (channel, len) =
                wire::channel_data_header(frame).expect("a ChannelData frame has a valid header");
            assert!(wire::CHANNEL_RANGE.contains(&channel));
            // RFC 8656 §12.5: padded to a multiple of four over streams.
            assert_eq!(
                frame.len(),
                (wire::CHANNEL_HEADER_LEN + len).next_multiple_of(4)
            );
        }
        _ => {
            // A STUN frame is exactly one message's length; the codec may still refuse it.
            let declared = u16::from_be_bytes([frame[2], frame[3]]) as usize;
            assert_eq!(frame.len(), wire::HEADER_LEN + declared);
            let _ = wire::parse_stun(frame);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (max_read, seed, stream) = (data[0] as usize * 4, data[1], &data[2..]);
    let (expected, expected_err) = oneshot(stream);
    let mut framer = Framer::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut error = None;
    let mut rng = u32::from(seed) | 0x100;
    let mut at = 0;
    'reads: while at < stream.len() {
        let n = if max_read == 0 {
            stream.len() - at
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            1 + (rng as usize % max_read).min(stream.len() - at - 1)
        };
        framer.extend(&stream[at..at + n]);
        at += n;
        // What the worker does after every read: take frames until it needs more bytes.
        loop {
            match framer.next_frame() {
                Ok(Some(range)) => frames.push(framer.data()[range].to_vec()),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'reads;
                }
            }
        }
        // Drained: only the partial frame is held, and it is shorter than a frame.
        assert_eq!(framer.data().len(), framer.pending(), "consumed bytes kept");
        assert!(
            framer.pending() < MAX_FRAME + 3,
            "framer holds {}",
            framer.pending()
        );
    }
    assert_eq!(
        frames.len(),
        expected.len(),
        "frame count differs with reads of {max_read}"
    );
    for (got, want) in frames.iter().zip(&expected) {
        assert_eq!(got.as_slice(), *want);
        check_frame(got);
    }
    assert_eq!(error, expected_err);
});
