//! Streaming decompression (with the diffID hashed on the way) and streaming compression
//! (tar -> sha256 for the diffID -> gzip/zstd -> sha256 for the blob digest -> sink).

use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use kiln_types::Sha256;
use kiln_types::{Digest, Sha256Writer};

use super::diff::{write_entries, DiffOptions, DiffStats, WalkMode};
use super::{ArchiveError, Compression};

/// Buffer size between the compressed source and the decompressor.
const COMPRESSED_BUFFER: usize = 256 * 1024;

/// Tells a layer's compression from its first bytes (gzip and zstd magic numbers; anything
/// else is taken as an uncompressed tar). For ADD of local archives, whose type no media type
/// tells.
pub fn detect_compression(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Uncompressed
    }
}

/// A reader that decompresses gzip (all members, as Go's reader does), zstd (all frames) or
/// passes an uncompressed stream through.
pub struct DecompressingReader<R: Read> {
    decoder: Decoder<R>,
}

enum Decoder<R: Read> {
    Uncompressed(R),
    Gzip(Box<MultiGzDecoder<BufReader<R>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<R>>>),
}

/// Wraps a reader of compressed bytes in the decompressor for `compression`.
pub fn decompressing_reader<R: Read>(
    reader: R,
    compression: Compression,
) -> io::Result<DecompressingReader<R>> {
    let decoder = match compression {
        Compression::Uncompressed => Decoder::Uncompressed(reader),
        Compression::Gzip => Decoder::Gzip(Box::new(MultiGzDecoder::new(
            BufReader::with_capacity(COMPRESSED_BUFFER, reader),
        ))),
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                COMPRESSED_BUFFER,
                reader,
            ))?;
            // Allow the long windows `zstd --long` writes (up to 2 GiB), as containerd does
            // not limit them either; the memory cost is the window the producer chose.
            decoder.window_log_max(31)?;
            Decoder::Zstd(Box::new(decoder))
        }
    };
    Ok(DecompressingReader { decoder })
}

impl<R: Read> DecompressingReader<R> {
    /// The compressed-side reader (after the bytes the decompressor has buffered from it).
    pub fn into_inner(self) -> R {
        match self.decoder {
            Decoder::Uncompressed(reader) => reader,
            Decoder::Gzip(decoder) => decoder.into_inner().into_inner(),
            Decoder::Zstd(decoder) => decoder.finish().into_inner(),
        }
    }
}

impl<R: Read> Read for DecompressingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match &mut self.decoder {
            Decoder::Uncompressed(reader) => reader.read(buffer),
            Decoder::Gzip(reader) => reader.read(buffer),
            Decoder::Zstd(reader) => reader.read(buffer),
        }
    }
}

/// Counts the bytes read through it.
pub(crate) struct CountingReader<R> {
    pub(crate) inner: R,
    pub(crate) count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.count += read as u64;
        Ok(read)
    }
}

/// The error a [`HashingReader`] returns once its size limit is passed; found again with
/// [`is_size_limit`] after it has travelled through other readers.
#[derive(Debug)]
pub(crate) struct SizeLimitExceeded;

impl std::fmt::Display for SizeLimitExceeded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("layer exceeds the uncompressed size limit")
    }
}

impl std::error::Error for SizeLimitExceeded {}

/// Whether an I/O error is a [`SizeLimitExceeded`].
pub(crate) fn is_size_limit(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<SizeLimitExceeded>())
}

/// Hashes every byte read through it and enforces an optional size limit.
pub(crate) struct HashingReader<R> {
    pub(crate) inner: R,
    hasher: Sha256,
    count: u64,
    limit: Option<u64>,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, limit: Option<u64>) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }

    /// The digest and size of everything read, and the inner reader.
    pub(crate) fn finish(self) -> (Digest, u64, R) {
        (
            Digest::from_sha256(self.hasher.finalize()),
            self.count,
            self.inner,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        self.count += read as u64;
        if let Some(limit) = self.limit {
            if self.count > limit {
                return Err(io::Error::other(SizeLimitExceeded));
            }
        }
        Ok(read)
    }
}

/// How to compress a layer written with [`LayerWriter`] / [`write_compressed_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionOptions {
    pub compression: Compression,
    /// gzip 0-9 (default 6, as Go's `gzip.DefaultCompression`), zstd 1-22 (default 3).
    pub level: Option<i32>,
}

impl CompressionOptions {
    pub fn gzip() -> Self {
        CompressionOptions {
            compression: Compression::Gzip,
            level: None,
        }
    }

    pub fn zstd() -> Self {
        CompressionOptions {
            compression: Compression::Zstd,
            level: None,
        }
    }

    pub fn uncompressed() -> Self {
        CompressionOptions {
            compression: Compression::Uncompressed,
            level: None,
        }
    }
}

/// What one pass of writing a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressedLayer {
    /// sha256 of the uncompressed tar (goes into the image config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// sha256 of the bytes written to the sink (the layer descriptor's digest).
    pub digest: Digest,
    /// Bytes written to the sink (the layer descriptor's size).
    pub size: u64,
    pub compression: Compression,
}

enum Encoder<W: Write> {
    /// No compression: the blob is the tar, its digest the diffID (hashed once).
    Uncompressed(W),
    Gzip(GzEncoder<Sha256Writer<W>>),
    Zstd(zstd::stream::write::Encoder<'static, Sha256Writer<W>>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Uncompressed(writer) => writer.write(buffer),
            Encoder::Gzip(writer) => writer.write(buffer),
            Encoder::Zstd(writer) => writer.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Uncompressed(writer) => writer.flush(),
            Encoder::Gzip(writer) => writer.flush(),
            Encoder::Zstd(writer) => writer.flush(),
        }
    }
}

/// A writer that takes an uncompressed tar stream and, in one pass, hashes it (diffID),
/// compresses it, hashes the compressed bytes (blob digest) and writes them to the sink.
pub struct LayerWriter<W: Write> {
    inner: Sha256Writer<Encoder<W>>,
    compression: Compression,
}

impl<W: Write> LayerWriter<W> {
    pub fn new(sink: W, options: CompressionOptions) -> io::Result<Self> {
        let encoder = match options.compression {
            Compression::Uncompressed => Encoder::Uncompressed(sink),
            Compression::Gzip => {
                let level = options.level.unwrap_or(6).clamp(0, 9) as u32;
                Encoder::Gzip(GzEncoder::new(
                    Sha256Writer::new(sink),
                    flate2::Compression::new(level),
                ))
            }
            Compression::Zstd => {
                let level = options.level.unwrap_or(3);
                Encoder::Zstd(zstd::stream::write::Encoder::new(
                    Sha256Writer::new(sink),
                    level,
                )?)
            }
        };
        Ok(LayerWriter {
            inner: Sha256Writer::new(encoder),
            compression: options.compression,
        })
    }

    /// Ends the compressed stream and returns the digests, sizes and the sink.
    pub fn finish(self) -> io::Result<(CompressedLayer, W)> {
        let (diff_id, uncompressed_size, encoder) = self.inner.finish();
        let (digest, size, mut sink) = match encoder {
            Encoder::Uncompressed(sink) => (diff_id.clone(), uncompressed_size, sink),
            Encoder::Gzip(encoder) => encoder.finish()?.finish(),
            Encoder::Zstd(encoder) => encoder.finish()?.finish(),
        };
        sink.flush()?;
        Ok((
            CompressedLayer {
                diff_id,
                uncompressed_size,
                digest,
                size,
                compression: self.compression,
            },
            sink,
        ))
    }
}

impl<W: Write> Write for LayerWriter<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.inner.write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a layer is written from.
#[derive(Debug, Clone, Copy)]
pub enum LayerSource<'a> {
    /// An overlayfs upper directory: whiteout devices and opaque xattrs become OCI whiteouts.
    Upper(&'a Path),
    /// A plain directory tree, written as it is (`type=tar` export, `COPY --link` layers).
    Tree(&'a Path),
}

/// Writes a layer from `source` into `sink` in one pass: tar -> sha256 (diffID) -> compressor
/// -> sha256 (blob digest) -> sink. Returns the digests and sizes, the walk's statistics and
/// the sink.
///
/// Two threads: this one walks the tree and reads files (system time), a second one hashes
/// and compresses (user time), with a few MiB in flight between them.
pub fn write_compressed_layer<W: Write + Send>(
    source: LayerSource<'_>,
    sink: W,
    compression: CompressionOptions,
    options: &DiffOptions,
) -> Result<(CompressedLayer, DiffStats, W), ArchiveError> {
    let (path, mode) = match source {
        LayerSource::Upper(path) => (path, WalkMode::Upper),
        LayerSource::Tree(path) => (path, WalkMode::Tree),
    };
    let layer = LayerWriter::new(sink, compression).map_err(ArchiveError::Write)?;
    std::thread::scope(|scope| {
        let (chunks, received) = mpsc::sync_channel::<Vec<u8>>(PIPELINE_DEPTH);
        let compressor = scope.spawn(move || -> io::Result<(CompressedLayer, W)> {
            let mut layer = layer;
            for chunk in received {
                layer.write_all(&chunk)?;
            }
            layer.finish()
        });
        // The writer is dropped here, on success or error: that ends the compressor's input.
        let walked = write_entries(path, ChunkWriter { chunks }, options, mode)
            .map(|(counts, _writer)| counts);
        let compressed = match compressor.join() {
            Ok(result) => result,
            Err(_) => {
                return Err(ArchiveError::Write(io::Error::other(
                    "the layer compressing thread panicked",
                )))
            }
        };
        let (counts, compressed, sink) = match (walked, compressed) {
            (Ok(counts), Ok((compressed, sink))) => (counts, compressed, sink),
            // The walker's write failed because the compressor stopped: report why it did.
            (Err(ArchiveError::Write(_)), Err(error)) => return Err(ArchiveError::Write(error)),
            (Err(error), _) => return Err(error),
            (Ok(_), Err(error)) => return Err(ArchiveError::Write(error)),
        };
        let stats = counts.into_stats(compressed.diff_id.clone(), compressed.uncompressed_size);
        Ok((compressed, stats, sink))
    })
}

/// Chunks in flight between the walking and the compressing thread.
const PIPELINE_DEPTH: usize = 4;

/// Sends each write to the compressing thread (the walker writes through a 1 MiB buffer, so
/// chunks are large). A failed send means the compressor stopped: its error is reported.
struct ChunkWriter {
    chunks: mpsc::SyncSender<Vec<u8>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.chunks
            .send(buffer.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped"))?;
        Ok(buffer.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
