//! Layer compression throughput: a ~100 MB tar-like stream (mixed text, binary and already
//! compressed-looking data) through parallel gzip and multi-threaded zstd, as MB/s of input.
//! Run with `cargo bench -p kiln-exporter --bench compress`.

use std::io::Write;

use divan::counter::BytesCount;
use divan::Bencher;
use kiln_exporter::{default_threads, Compression, LayerCompressor};

const LAYER_SIZE: usize = 100 << 20;

fn main() {
    divan::main();
}

/// A deterministic stand-in for a layer: a third text (compresses well), a third machine code
/// like bytes (compresses somewhat), a third pseudo-random (does not compress).
fn layer_bytes() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(LAYER_SIZE);
    let mut counter = 0u64;
    while bytes.len() < LAYER_SIZE / 3 {
        bytes.extend_from_slice(
            format!(
                "/usr/share/doc/package-{}/changelog line {counter}\n",
                counter % 313
            )
            .as_bytes(),
        );
        counter += 1;
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    while bytes.len() < 2 * LAYER_SIZE / 3 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Few distinct values, like opcodes and small immediates.
        bytes.push((state % 24) as u8 * 3);
    }
    while bytes.len() < LAYER_SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(LAYER_SIZE);
    bytes
}

fn compress(input: &[u8], compression: Compression, threads: usize) -> usize {
    let mut compressor =
        LayerCompressor::new(Vec::with_capacity(input.len()), compression, None, threads)
            .expect("compressor");
    for chunk in input.chunks(1 << 20) {
        compressor.write_all(chunk).expect("compress");
    }
    compressor.finish().expect("finish").len()
}

#[divan::bench(args = [Compression::Gzip, Compression::Zstd], sample_count = 3, sample_size = 1)]
fn all_cores(bencher: Bencher, compression: Compression) {
    let input = layer_bytes();
    bencher
        .counter(BytesCount::new(input.len()))
        .bench(|| compress(&input, compression, default_threads()));
}

#[divan::bench(args = [Compression::Gzip, Compression::Zstd], sample_count = 3, sample_size = 1)]
fn one_thread(bencher: Bencher, compression: Compression) {
    let input = layer_bytes();
    bencher
        .counter(BytesCount::new(input.len()))
        .bench(|| compress(&input, compression, 1));
}

/// flate2's single-stream gzip on the same backend, for comparison.
#[divan::bench(sample_count = 3, sample_size = 1)]
fn flate2_single_stream(bencher: Bencher) {
    let input = layer_bytes();
    bencher.counter(BytesCount::new(input.len())).bench(|| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(&input).expect("compress");
        encoder.finish().expect("finish").len()
    });
}
