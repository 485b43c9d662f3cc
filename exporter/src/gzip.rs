//! Parallel gzip: the stream is cut into blocks that worker threads deflate at once, each
//! primed with the last 32 KiB of the block before it (as pigz does), and written in order as
//! one gzip member.
//!
//! The output depends only on the bytes, the level and the block size, never on the number
//! of threads or their timing, so layer digests are reproducible on any machine. Each block
//! ends with a sync flush (an empty stored block), which costs a few bytes per block; the
//! dictionary keeps the ratio within a fraction of a percent of a single-threaded stream.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Bytes of input per block (pigz uses 128 KiB; larger blocks mean fewer sync markers and
/// fewer hand-offs between threads).
pub const GZIP_BLOCK_SIZE: usize = 1 << 20;
/// The deflate window: how much of the previous block primes the next.
const DICTIONARY_SIZE: usize = 32 * 1024;

struct Job {
    index: u64,
    input: Vec<u8>,
    dictionary: Option<Arc<Vec<u8>>>,
    last: bool,
}

struct Done {
    index: u64,
    result: io::Result<(Vec<u8>, Crc)>,
}

/// A writer that gzips what is written to it on several threads and writes the compressed
/// stream to `sink`, in order, from the caller's thread (the sink need not be `Send`).
/// Call [`finish`](Self::finish): dropping the writer without it leaves a truncated stream.
pub struct ParallelGzipWriter<W: Write> {
    /// Taken by [`finish`](Self::finish).
    sink: Option<W>,
    level: u32,
    block: Vec<u8>,
    /// The tail of the last block sent, to prime the next one.
    dictionary: Option<Arc<Vec<u8>>>,
    next_index: u64,
    next_to_write: u64,
    pending: BTreeMap<u64, (Vec<u8>, Crc)>,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    crc: Crc,
    header_written: bool,
    failed: bool,
}

impl<W: Write> ParallelGzipWriter<W> {
    /// A writer with `threads` compression threads (at least one) at gzip `level` (0-9).
    pub fn new(sink: W, level: u32, threads: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let level = level.min(9);
        let (job_sender, job_receiver) = mpsc::sync_channel::<Job>(threads * 2);
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let (result_sender, results) = mpsc::channel::<Done>();
        let mut workers = Vec::with_capacity(threads);
        for number in 0..threads {
            let job_receiver = Arc::clone(&job_receiver);
            let result_sender: Sender<Done> = result_sender.clone();
            let worker = std::thread::Builder::new()
                .name(format!("kiln-gzip-{number}"))
                .spawn(move || compress_blocks(level, &job_receiver, &result_sender))?;
            workers.push(worker);
        }
        Ok(ParallelGzipWriter {
            sink: Some(sink),
            level,
            block: Vec::with_capacity(GZIP_BLOCK_SIZE),
            dictionary: None,
            next_index: 0,
            next_to_write: 0,
            pending: BTreeMap::new(),
            in_flight: 0,
            max_in_flight: threads * 2 + 1,
            jobs: Some(job_sender),
            results,
            workers,
            crc: Crc::new(),
            header_written: false,
            failed: false,
        })
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.failed {
            Err(io::Error::other("the gzip stream failed earlier"))
        } else {
            Ok(())
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // No name, no mtime (reproducible), extra flags as Go's writer sets them, OS
            // "unknown" (255) as Go and pigz write.
            let extra_flags = match self.level {
                9 => 2,
                1 => 4,
                _ => 0,
            };
            self.sink()?
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, extra_flags, 255])?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Hands the current block to the workers.
    fn send_block(&mut self, last: bool) -> io::Result<()> {
        let input = std::mem::replace(&mut self.block, Vec::with_capacity(GZIP_BLOCK_SIZE));
        let next_dictionary = if last {
            None
        } else {
            let start = input.len().saturating_sub(DICTIONARY_SIZE);
            Some(Arc::new(input[start..].to_vec()))
        };
        let job = Job {
            index: self.next_index,
            input,
            dictionary: std::mem::replace(&mut self.dictionary, next_dictionary),
            last,
        };
        self.next_index += 1;
        while self.in_flight >= self.max_in_flight {
            self.receive_one()?;
        }
        let sent = self
            .jobs
            .as_ref()
            .map(|jobs| jobs.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(io::Error::other("the gzip compression threads stopped"));
        }
        self.in_flight += 1;
        self.write_ready()
    }

    /// Waits for one finished block.
    fn receive_one(&mut self) -> io::Result<()> {
        let done = self
            .results
            .recv()
            .map_err(|_| io::Error::other("the gzip compression threads stopped"))?;
        self.in_flight -= 1;
        let (output, crc) = done.result?;
        self.pending.insert(done.index, (output, crc));
        self.write_ready()
    }

    /// Writes the finished blocks that are next in order.
    fn write_ready(&mut self) -> io::Result<()> {
        while let Ok(done) = self.results.try_recv() {
            self.in_flight -= 1;
            let (output, crc) = done.result?;
            self.pending.insert(done.index, (output, crc));
        }
        self.write_header()?;
        while let Some((output, crc)) = self.pending.remove(&self.next_to_write) {
            self.sink()?.write_all(&output)?;
            self.crc.combine(&crc);
            self.next_to_write += 1;
        }
        Ok(())
    }

    fn finish_stream(&mut self) -> io::Result<()> {
        self.check_usable()?;
        self.send_block(true)?;
        while self.in_flight > 0 {
            self.receive_one()?;
        }
        if self.next_to_write != self.next_index {
            return Err(io::Error::other("a gzip block was lost"));
        }
        self.write_header()?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        let sink = self.sink()?;
        sink.write_all(&trailer)?;
        sink.flush()
    }

    fn sink(&mut self) -> io::Result<&mut W> {
        self.sink
            .as_mut()
            .ok_or_else(|| io::Error::other("the gzip stream is finished"))
    }

    /// Ends the stream (last block, CRC and length trailer) and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        let result = self.finish_stream();
        self.stop_workers();
        if let Err(error) = result {
            self.failed = true;
            return Err(error);
        }
        self.sink()?;
        self.sink
            .take()
            .ok_or_else(|| io::Error::other("the gzip stream is finished"))
    }

    fn stop_workers(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl<W: Write> Write for ParallelGzipWriter<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.check_usable()?;
        let room = GZIP_BLOCK_SIZE - self.block.len();
        let taken = room.min(buffer.len());
        self.block.extend_from_slice(&buffer[..taken]);
        if self.block.len() == GZIP_BLOCK_SIZE {
            if let Err(error) = self.send_block(false) {
                self.failed = true;
                return Err(error);
            }
        }
        Ok(taken)
    }

    /// Writes out the blocks finished so far; the current partial block stays buffered (a
    /// gzip stream cannot be flushed mid-block without changing its bytes).
    fn flush(&mut self) -> io::Result<()> {
        self.check_usable()?;
        self.write_ready()?;
        self.sink()?.flush()
    }
}

impl<W: Write> Drop for ParallelGzipWriter<W> {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// A worker: deflates blocks until the job channel closes.
fn compress_blocks(level: u32, jobs: &Mutex<Receiver<Job>>, results: &Sender<Done>) {
    let mut compress = Compress::new(Compression::new(level), false);
    loop {
        let job = {
            let Ok(receiver) = jobs.lock() else { return };
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let result = deflate_block(&mut compress, &job);
        compress.reset();
        if results
            .send(Done {
                index: job.index,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

fn deflate_block(compress: &mut Compress, job: &Job) -> io::Result<(Vec<u8>, Crc)> {
    if let Some(dictionary) = &job.dictionary {
        compress
            .set_dictionary(dictionary)
            .map_err(io::Error::other)?;
    }
    let flush = if job.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let input = &job.input;
    let mut output = Vec::with_capacity(input.len() / 2 + 1024);
    let start = compress.total_in();
    loop {
        if output.capacity() - output.len() < 16 * 1024 {
            output.reserve(output.capacity().max(64 * 1024));
        }
        let consumed = (compress.total_in() - start) as usize;
        let status = compress
            .compress_vec(&input[consumed..], &mut output, flush)
            .map_err(io::Error::other)?;
        let consumed = (compress.total_in() - start) as usize;
        if consumed < input.len() {
            continue;
        }
        let complete = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // A sync flush is complete once deflate returns with output space left over.
            _ => output.len() < output.capacity(),
        };
        if complete {
            break;
        }
    }
    let mut crc = Crc::new();
    crc.update(input);
    Ok((output, crc))
}
