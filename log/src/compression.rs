//! Compression codecs of RecordBatch v2, delegated to the codec crates (flate2, snap, lz4_flex, zstd).
//!
//! The log never recompresses what a producer sent; these are used by the batch builder and by
//! the record iterator when something (a CLI consumer, a gRPC fetch, compaction) needs records.

use std::io::{Read, Write};

use crate::error::BatchError;

/// The codec in bits 0-2 of a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// xerial snappy-java's stream header: Java producers frame snappy data with it; librdkafka sends
/// raw snappy. Both are accepted on read.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\0";
const XERIAL_HEADER_LEN: usize = 16;

impl Compression {
    pub fn from_attributes(attributes: i16) -> Result<Compression, BatchError> {
        match (attributes & 0x07) as u8 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }

    pub fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Kafka's name for the codec (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Compression> {
        Some(match name {
            "none" | "uncompressed" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            _ => return None,
        })
    }

    /// Compresses a batch's record section.
    pub fn compress(self, raw: &[u8]) -> Vec<u8> {
        // Writing into a Vec cannot fail, and every encoder below only fails on writer errors.
        match self {
            Compression::None => raw.to_vec(),
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(raw.len() / 2),
                    flate2::Compression::default(),
                );
                let _ = enc.write_all(raw);
                enc.finish().unwrap_or_default()
            }
            Compression::Snappy => snap::raw::Encoder::new()
                .compress_vec(raw)
                .unwrap_or_default(),
            Compression::Lz4 => {
                // Kafka's KafkaLZ4BlockInputStream reads independent 64 KiB blocks.
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max64KB)
                    .block_mode(lz4_flex::frame::BlockMode::Independent);
                let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(
                    info,
                    Vec::with_capacity(raw.len() / 2),
                );
                let _ = enc.write_all(raw);
                enc.finish().unwrap_or_default()
            }
            Compression::Zstd => zstd::bulk::compress(raw, 3).unwrap_or_default(),
        }
    }

    /// Decompresses a record section, refusing to produce more than `limit` bytes (a small
    /// compressed batch must not be able to exhaust memory).
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => read_limited(flate2::read::GzDecoder::new(data), limit),
            Compression::Lz4 => read_limited(lz4_flex::frame::FrameDecoder::new(data), limit),
            Compression::Zstd => {
                let dec = zstd::stream::read::Decoder::new(data)
                    .map_err(|e| BatchError::Decompression(e.to_string()))?;
                read_limited(dec, limit)
            }
            Compression::Snappy => decompress_snappy(data, limit),
        }
    }
}

fn read_limited(reader: impl Read, limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Decompression(e.to_string()))?;
    if out.len() > limit {
        return Err(BatchError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

fn snappy_raw(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let len =
        snap::raw::decompress_len(data).map_err(|e| BatchError::Decompression(e.to_string()))?;
    if out.len() + len > limit {
        return Err(BatchError::DecompressedTooLarge { limit });
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(data, &mut out[start..])
        .map_err(|e| BatchError::Decompression(e.to_string()))?;
    Ok(())
}

fn decompress_snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    if data.len() >= XERIAL_HEADER_LEN && &data[..8] == XERIAL_MAGIC {
        // xerial framing: 16-byte header, then blocks of [u32 BE length][raw snappy].
        let mut rest = &data[XERIAL_HEADER_LEN..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(BatchError::Decompression("truncated xerial block".into()));
            }
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if n > rest.len() {
                return Err(BatchError::Decompression("truncated xerial block".into()));
            }
            snappy_raw(&rest[..n], limit, &mut out)?;
            rest = &rest[n..];
        }
    } else {
        snappy_raw(data, limit, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let raw: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = c.compress(&raw);
            assert_eq!(c.decompress(&packed, raw.len()).unwrap(), raw, "{c:?}");
            if c != Compression::None {
                assert!(matches!(
                    c.decompress(&packed, raw.len() - 1),
                    Err(BatchError::DecompressedTooLarge { .. })
                ));
            }
        }
    }

    #[test]
    fn xerial_framed_snappy_is_read() {
        let raw = b"hello hello hello hello".repeat(100);
        let block = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
        framed.extend_from_slice(&block);
        assert_eq!(
            Compression::Snappy.decompress(&framed, 1 << 20).unwrap(),
            raw
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(
                c.decompress(b"\x00\x01garbage\xff", 1 << 20).is_err(),
                "{c:?}"
            );
        }
    }
}
