//! Fast layer compression: gzip on every core ([`ParallelGzipWriter`]) and multi-threaded
//! zstd, behind one writer.

use std::io::{self, Write};

use kiln_types::media_type::Compression;

use crate::gzip::ParallelGzipWriter;

/// gzip level used when none is given (Go's `gzip.DefaultCompression`, as BuildKit).
pub const DEFAULT_GZIP_LEVEL: i32 = 6;
/// zstd level used when none is given (zstd's default, as BuildKit).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The level that will actually be used for `compression` (`None` for uncompressed).
pub fn effective_level(compression: Compression, level: Option<i32>) -> Option<i32> {
    match compression {
        Compression::Uncompressed => None,
        Compression::Gzip => Some(level.unwrap_or(DEFAULT_GZIP_LEVEL).clamp(0, 9)),
        Compression::Zstd => {
            let range = zstd::compression_level_range();
            Some(
                level
                    .unwrap_or(DEFAULT_ZSTD_LEVEL)
                    .clamp(*range.start(), *range.end()),
            )
        }
    }
}

/// How many compression threads to use by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
}

/// A writer that compresses into `W` with the chosen algorithm.
pub enum LayerCompressor<W: Write> {
    Uncompressed(W),
    Gzip(ParallelGzipWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> LayerCompressor<W> {
    /// A compressor into `sink`. zstd always runs in multi-threaded mode (at least one
    /// worker), whose output does not depend on the number of workers; parallel gzip's does
    /// not either, so the bytes are the same on any machine.
    pub fn new(
        sink: W,
        compression: Compression,
        level: Option<i32>,
        threads: usize,
    ) -> io::Result<Self> {
        let level = effective_level(compression, level);
        let threads = threads.max(1);
        Ok(match (compression, level) {
            (Compression::Gzip, Some(level)) => {
                LayerCompressor::Gzip(ParallelGzipWriter::new(sink, level as u32, threads)?)
            }
            (Compression::Zstd, Some(level)) => {
                let mut encoder = zstd::stream::write::Encoder::new(sink, level)?;
                encoder.multithread(threads as u32)?;
                LayerCompressor::Zstd(encoder)
            }
            _ => LayerCompressor::Uncompressed(sink),
        })
    }

    /// Ends the compressed stream and returns the sink.
    pub fn finish(self) -> io::Result<W> {
        match self {
            LayerCompressor::Uncompressed(mut sink) => {
                sink.flush()?;
                Ok(sink)
            }
            LayerCompressor::Gzip(writer) => writer.finish(),
            LayerCompressor::Zstd(encoder) => encoder.finish(),
        }
    }
}

impl<W: Write> Write for LayerCompressor<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            LayerCompressor::Uncompressed(sink) => sink.write(buffer),
            LayerCompressor::Gzip(writer) => writer.write(buffer),
            LayerCompressor::Zstd(encoder) => encoder.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            LayerCompressor::Uncompressed(sink) => sink.flush(),
            LayerCompressor::Gzip(writer) => writer.flush(),
            // A zstd flush ends a block early and would change the bytes: only `finish`
            // ends blocks, so the output depends on the input alone.
            LayerCompressor::Zstd(_) => Ok(()),
        }
    }
}
