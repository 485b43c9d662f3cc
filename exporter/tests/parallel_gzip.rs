//! Parallel gzip: read back by flate2 and by the system's gzip, the same bytes whatever the
//! thread count, and clean errors from a failing sink.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

use kiln_exporter::{ParallelGzipWriter, GZIP_BLOCK_SIZE};

fn sample(length: usize) -> Vec<u8> {
    // Compressible but not trivial: text-like runs with a changing counter.
    let mut bytes = Vec::with_capacity(length);
    let mut counter = 0u64;
    while bytes.len() < length {
        bytes.extend_from_slice(
            format!("line {counter} of the sample {}\n", counter % 97).as_bytes(),
        );
        counter += 1;
    }
    bytes.truncate(length);
    bytes
}

fn compress(input: &[u8], level: u32, threads: usize, write_size: usize) -> Vec<u8> {
    let mut writer = ParallelGzipWriter::new(Vec::new(), level, threads).unwrap();
    for chunk in input.chunks(write_size.max(1)) {
        writer.write_all(chunk).unwrap();
    }
    writer.finish().unwrap()
}

#[test]
fn output_is_read_back_by_flate2_and_system_gzip() {
    for length in [
        0,
        1,
        GZIP_BLOCK_SIZE - 1,
        GZIP_BLOCK_SIZE,
        3 * GZIP_BLOCK_SIZE + 12_345,
    ] {
        let input = sample(length);
        let compressed = compress(&input, 6, 3, 100_000);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, input, "flate2, {length} bytes");
        // One gzip member: a single-member decoder reads it all.
        let mut child = Command::new("gzip")
            .args(["-d", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run gzip");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&compressed));
        let mut output = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut output)
            .unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            child.wait().unwrap().success(),
            "gzip -d failed on {length} bytes"
        );
        assert_eq!(output, input, "system gzip, {length} bytes");
    }
}

#[test]
fn bytes_do_not_depend_on_threads_or_write_sizes() {
    let input = sample(5 * GZIP_BLOCK_SIZE + 777);
    let reference = compress(&input, 6, 1, 65_536);
    for (threads, write_size) in [(2, 1 << 20), (4, 4096), (8, 3 * GZIP_BLOCK_SIZE)] {
        assert_eq!(compress(&input, 6, threads, write_size), reference);
    }
    assert_ne!(compress(&input, 1, 2, 65_536), reference);
    // The dictionary keeps the ratio close to a single stream's.
    let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    single.write_all(&input).unwrap();
    let single = single.finish().unwrap();
    assert!(
        (reference.len() as f64) < single.len() as f64 * 1.02 + 256.0,
        "parallel {} vs single {}",
        reference.len(),
        single.len()
    );
}

struct FailingSink {
    accepted: usize,
}

impl Write for FailingSink {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        if self.accepted > 100 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        self.accepted += buffer.len();
        Ok(buffer.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_sink_gives_an_error_not_a_panic() {
    let input = sample(6 * GZIP_BLOCK_SIZE);
    let mut writer = ParallelGzipWriter::new(FailingSink { accepted: 0 }, 6, 2).unwrap();
    let mut failed = false;
    for chunk in input.chunks(100_000) {
        if writer.write_all(chunk).is_err() {
            failed = true;
            break;
        }
    }
    let finished = writer.finish();
    assert!(failed || finished.is_err());
    // Writing after a failure, and dropping, stay errors.
    let mut writer = ParallelGzipWriter::new(FailingSink { accepted: 0 }, 6, 2).unwrap();
    let _ = writer.write_all(&input);
    assert!(writer.write_all(&input).is_err());
    drop(writer);
}
