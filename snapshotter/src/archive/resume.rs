//! Writing a layer tar whose diffID is resumed from an earlier, similar layer's.
//!
//! A rebuild that changes one file of a large COPY produces a tar equal to the previous one up
//! to that file's entry. Hashing that common prefix again is most of the export's time (sha256
//! is ~410 MB/s here; reading and comparing bytes is many times faster). So the new tar is
//! compared byte for byte with the earlier layer's uncompressed blob while it is written; at
//! the first difference the hash resumes from the earlier layer's last saved state at or
//! before that point ([`MIDSTATE_INTERVAL`] apart), is fed the earlier blob's bytes from that
//! state up to the difference, and from then on hashes the new stream as usual.
//!
//! Nothing is trusted that was not compared: the new stream is written in full, and only the
//! bytes proven equal to the earlier blob are taken as hashed by the earlier state. If the
//! reference differs from the first byte, this is the ordinary pipelined hash plus one read.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use kiln_types::{CheckpointingSha256, Digest, Sha256, Sha256Midstate};

use super::diff::{write_entries_buffered, DiffOptions, DiffStats, WalkMode};
use super::ArchiveError;

/// Bytes of tar between two saved sha256 states. A resumed hash re-reads at most this much
/// of the earlier blob; 130 states for a 0.5 GB layer.
pub const MIDSTATE_INTERVAL: u64 = 4 << 20;

/// An earlier layer to compare with: its uncompressed tar and the states saved while it was
/// hashed (every [`MIDSTATE_INTERVAL`] bytes).
#[derive(Debug)]
pub struct LayerReference {
    /// The earlier layer's uncompressed tar (its blob when stored uncompressed).
    pub tar: File,
    /// Its length in bytes.
    pub size: u64,
    /// Its sha256 (diffID).
    pub diff_id: Digest,
    /// The states saved while hashing it, in stream order.
    pub midstates: Vec<Sha256Midstate>,
}

/// A layer tar written with [`write_layer_from_upper_resuming`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumedLayer {
    pub stats: DiffStats,
    /// States saved every [`MIDSTATE_INTERVAL`] bytes of this tar, for the next layer to
    /// resume from.
    pub midstates: Vec<Sha256Midstate>,
    /// Bytes at the start of the tar found equal to the reference and not hashed again.
    pub reused_prefix: u64,
}

/// [`super::write_layer_from_upper`], comparing with `reference` (if any) to skip hashing the
/// prefix the two tars share, and saving states for the next one.
pub fn write_layer_from_upper_resuming<W: Write>(
    upper: &Path,
    writer: W,
    options: &DiffOptions,
    reference: Option<LayerReference>,
) -> Result<ResumedLayer, ArchiveError> {
    let sink = ResumingHasher::new(writer, reference);
    // the sink gathers the walk's writes into its chunks itself
    let (counts, sink) = write_entries_buffered(upper, sink, options, WalkMode::Upper, 0)?;
    let (diff_id, size, midstates, reused_prefix) = sink.finish().map_err(ArchiveError::Write)?;
    Ok(ResumedLayer {
        stats: counts.into_stats(diff_id, size),
        midstates,
        reused_prefix,
    })
}

/// Bytes collected before a chunk goes to the comparing/hashing thread.
const CHUNK: usize = 1 << 20;

/// A writer that gathers what it is given into chunks, writes each chunk on and hands it to a
/// thread of its own, which compares it with the reference tar until the first difference and
/// hashes from then on (resumed from the reference's saved states). The walk and the writes
/// stay on the caller's thread.
struct ResumingHasher<W> {
    inner: W,
    pending: Vec<u8>,
    sender: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<io::Result<Resumed>>>,
    /// Used instead when no thread could be started.
    inline: Option<Resume>,
    /// Bytes written so far.
    written: u64,
}

/// The hashing side's result: diffID, saved states, bytes whose hash was reused.
type Resumed = (Digest, Vec<Sha256Midstate>, u64);

impl<W: Write> ResumingHasher<W> {
    fn new(inner: W, reference: Option<LayerReference>) -> Self {
        let resume = Resume::new(reference);
        // a few chunks in flight: enough to keep the other side busy, bounded memory
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (resume, worker) = match std::thread::Builder::new()
            .name("kiln-sha256".into())
            .spawn(move || {
                let mut resume = resume;
                for chunk in receiver {
                    resume.update(&chunk)?;
                }
                resume.finish()
            }) {
            Ok(handle) => (None, Some(handle)),
            Err(_) => (Some(Resume::new(None)), None),
        };
        ResumingHasher {
            inner,
            pending: Vec::with_capacity(CHUNK),
            sender: worker.as_ref().map(|_| sender),
            worker,
            inline: resume,
            written: 0,
        }
    }

    /// Writes the gathered chunk on and hands it to the other side.
    fn send_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.inner.write_all(&self.pending)?;
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        if let Some(inline) = &mut self.inline {
            return inline.update(&chunk);
        }
        if let Some(sender) = &self.sender {
            if sender.send(chunk).is_err() {
                // the thread stopped on an error: `finish` reports it
                self.sender = None;
            }
        }
        Ok(())
    }

    /// The diffID, the size, the saved states and the bytes whose hash was reused.
    fn finish(mut self) -> io::Result<(Digest, u64, Vec<Sha256Midstate>, u64)> {
        self.send_pending()?;
        self.inner.flush()?;
        self.sender = None;
        let (diff_id, midstates, reused) = match (self.worker.take(), self.inline.take()) {
            (Some(handle), _) => match handle.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            (None, Some(inline)) => inline.finish()?,
            (None, None) => Resume::new(None).finish()?,
        };
        Ok((diff_id, self.written, midstates, reused))
    }
}

impl<W: Write> Write for ResumingHasher<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buffer);
        self.written += buffer.len() as u64;
        if self.pending.len() >= CHUNK {
            self.send_pending()?;
        }
        Ok(buffer.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()?;
        self.inner.flush()
    }
}

/// The comparing, then hashing, side.
struct Resume {
    /// Bytes of the stream seen so far.
    offset: u64,
    state: State,
}

enum State {
    /// Every byte so far equals the reference's.
    Comparing {
        reference: LayerReference,
        scratch: Vec<u8>,
    },
    /// Hashing: `kept` are the reference's states up to `reused`, where hashing resumed.
    Hashing {
        hashing: CheckpointingSha256,
        kept: Vec<Sha256Midstate>,
        reused: u64,
    },
}

impl Resume {
    fn new(reference: Option<LayerReference>) -> Self {
        let state = match reference {
            Some(reference) => State::Comparing {
                reference,
                scratch: Vec::new(),
            },
            None => State::Hashing {
                hashing: CheckpointingSha256::new(Sha256::new(), Some(MIDSTATE_INTERVAL)),
                kept: Vec::new(),
                reused: 0,
            },
        };
        Resume { offset: 0, state }
    }

    fn update(&mut self, chunk: &[u8]) -> io::Result<()> {
        let start = self.offset;
        self.offset += chunk.len() as u64;
        let (reference, scratch) = match &mut self.state {
            State::Hashing { hashing, .. } => {
                hashing.update(chunk);
                return Ok(());
            }
            State::Comparing { reference, scratch } => (reference, scratch),
        };
        if scratch.len() < chunk.len() {
            scratch.resize(chunk.len(), 0);
        }
        let mut got = 0;
        while got < chunk.len() {
            let read = reference
                .tar
                .read_at(&mut scratch[got..chunk.len()], start + got as u64)?;
            if read == 0 {
                break;
            }
            got += read;
        }
        if got == chunk.len() && scratch[..got] == *chunk {
            return Ok(());
        }
        let same = chunk[..got]
            .iter()
            .zip(&scratch[..got])
            .position(|(new, old)| new != old)
            .unwrap_or(got);
        let hashing = self.start_hashing(start + same as u64)?;
        hashing.update(&chunk[same..]);
        Ok(())
    }

    /// Leaves comparing: the stream's first `equal` bytes equal the reference's. Resumes from
    /// the reference's last state at or before `equal` and hashes the reference's bytes from
    /// there up to `equal`; returns the hasher for the bytes after.
    fn start_hashing(&mut self, equal: u64) -> io::Result<&mut CheckpointingSha256> {
        if let State::Comparing { reference, .. } = &self.state {
            let resume_at = reference
                .midstates
                .iter()
                .rev()
                .find(|state| state.length <= equal && state.length % MIDSTATE_INTERVAL == 0);
            let (hasher, start) =
                match resume_at.and_then(|state| Some((Sha256::resume(state)?, state.length))) {
                    Some(found) => found,
                    None => (Sha256::new(), 0),
                };
            let kept: Vec<Sha256Midstate> = reference
                .midstates
                .iter()
                .filter(|state| state.length <= start)
                .copied()
                .collect();
            let mut hashing = CheckpointingSha256::new(hasher, Some(MIDSTATE_INTERVAL));
            let mut buffer = vec![0u8; CHUNK];
            let mut position = start;
            while position < equal {
                let want = usize::try_from(equal - position)
                    .unwrap_or(usize::MAX)
                    .min(buffer.len());
                let read = reference.tar.read_at(&mut buffer[..want], position)?;
                if read == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the reference layer tar ended before the bytes it was compared with",
                    ));
                }
                hashing.update(&buffer[..read]);
                position += read as u64;
            }
            self.state = State::Hashing {
                hashing,
                kept,
                reused: start,
            };
        }
        match &mut self.state {
            State::Hashing { hashing, .. } => Ok(hashing),
            State::Comparing { .. } => unreachable!("switched to hashing just above"),
        }
    }

    fn finish(mut self) -> io::Result<Resumed> {
        if let State::Comparing { reference, .. } = &self.state {
            if reference.size == self.offset {
                // the same tar as the reference: its digest and states hold
                let State::Comparing { reference, .. } = self.state else {
                    unreachable!("matched just above");
                };
                return Ok((reference.diff_id, reference.midstates, self.offset));
            }
            // a prefix of the reference: hash it from the last state before its end
            self.start_hashing(self.offset)?;
        }
        let State::Hashing {
            hashing,
            mut kept,
            reused,
        } = self.state
        else {
            unreachable!("switched to hashing just above");
        };
        let (hash, midstates) = hashing.finish();
        kept.extend(midstates);
        Ok((Digest::from_sha256(hash), kept, reused))
    }
}
