//! STUN and ChannelData over a byte stream (TCP or TLS): RFC 8656 §12.5 framing.
//!
//! A stream carries STUN messages (first two bits 0b00, length in bytes 2–3, plus the 20-byte
//! header) and ChannelData frames (first byte 0x40–0x7F, length in bytes 2–3, plus the 4-byte
//! header, padded to a multiple of four). Anything else cannot be resynchronised, so the
//! connection is closed.

use std::ops::Range;

use crate::wire::{CHANNEL_HEADER_LEN, HEADER_LEN};

/// The largest frame: a STUN message with the biggest length field.
pub const MAX_FRAME: usize = HEADER_LEN + u16::MAX as usize;

/// The stream carries something that is neither STUN nor ChannelData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream is not STUN or ChannelData (first byte {0:#04x})")]
pub struct FrameError(pub u8);

/// The length of the first frame in `data`, once enough of it has arrived to tell:
/// `Ok(None)` means "need more bytes".
pub fn frame_len(data: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(&first) = data.first() else {
        return Ok(None);
    };
    let is_stun = first & 0xC0 == 0;
    if !is_stun && !(0x40..=0x7F).contains(&first) {
        return Err(FrameError(first));
    }
    if data.len() < 4 {
        return Ok(None);
    }
    let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
    let len = if is_stun {
        HEADER_LEN + declared
    } else {
        (CHANNEL_HEADER_LEN + declared).next_multiple_of(4)
    };
    Ok((data.len() >= len).then_some(len))
}

/// Accumulates stream bytes and hands out whole frames. Holds at most one partial frame plus
/// one read's worth, so a peer that trickles bytes cannot grow it.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    start: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        // Frames already handed out go first (there may be complete ones still waiting
        // behind them), so the buffer never holds more than what is pending plus `data`.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame's range in [`Framer::data`], consumed.
    pub fn next_frame(&mut self) -> Result<Option<Range<usize>>, FrameError> {
        match frame_len(&self.buf[self.start..])? {
            Some(len) => {
                let range = self.start..self.start + len;
                self.start += len;
                Ok(Some(range))
            }
            None => {
                // Keep only the partial frame, at the front; give back what a burst grew the
                // buffer to once it is drained.
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                if self.buf.capacity() > MAX_FRAME {
                    self.buf.shrink_to(self.buf.len());
                }
                Ok(None)
            }
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes held that are not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes allocated for input.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Zero bytes that pad a ChannelData frame of `len` bytes to a multiple of four.
pub fn channel_padding(len: usize) -> &'static [u8] {
    &[0u8; 3][..len.next_multiple_of(4) - len]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(body: usize) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body as u16).to_be_bytes());
        m.extend_from_slice(&0x2112A442u32.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat_n(0xAA, body));
        m
    }

    #[test]
    fn frames_stun_and_padded_channel_data_split_anywhere() {
        let mut stream = stun(8);
        stream.extend_from_slice(&[0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        stream.extend_from_slice(&[0x40, 0x02, 0x00, 0x04, 9, 9, 9, 9]);
        stream.extend(stun(0));
        for split in 0..stream.len() {
            let mut framer = Framer::new();
            let mut frames = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                framer.extend(part);
                while let Some(range) = framer.next_frame().unwrap() {
                    frames.push(framer.data()[range].to_vec());
                }
            }
            let lens: Vec<usize> = frames.iter().map(Vec::len).collect();
            assert_eq!(lens, [28, 12, 8, 20], "split at {split}");
            assert_eq!(framer.pending(), 0);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Err(FrameError(0x80)));
        assert_eq!(frame_len(&[0xFF]), Err(FrameError(0xFF)));
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0x00, 0x01, 0x00]), Ok(None));
    }

    #[test]
    fn partial_frame_is_kept_and_consumed_bytes_released() {
        let mut framer = Framer::new();
        let message = stun(100);
        framer.extend(&message);
        framer.extend(&message[..50]);
        assert!(framer.next_frame().unwrap().is_some());
        assert!(framer.next_frame().unwrap().is_none());
        assert_eq!(framer.data().len(), 50, "consumed frame dropped");
        assert!(frame_len(&[0x00, 0x01, 0xFF, 0xFF]).unwrap().is_none());
    }

    #[test]
    fn padding_rounds_to_four() {
        assert_eq!(channel_padding(8).len(), 0);
        assert_eq!(channel_padding(9).len(), 3);
        assert_eq!(channel_padding(11).len(), 1);
    }
}
