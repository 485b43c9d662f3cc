//! sha256 for every digest kiln computes: OpenSSL's implementation (its assembly picks the
//! SHA extensions, AVX2 + BMI2 or AVX, whichever the CPU has). On the machines here, which
//! have AVX2 but no SHA extensions, it hashes 406-411 MB/s where ring (also OpenSSL's
//! assembly, but without the AVX2 path) does 353-360 and the pure-Rust `sha2` 161-198.
//! Layers are hashed at least once per pull and per export, so this is on every hot path.
//!
//! OpenSSL's low-level `SHA256_*` interface is used rather than EVP because its state is a
//! plain structure: [`Sha256::midstate`] and [`Sha256::resume`] save and restore it, so a
//! long stream's hash can be resumed from a known prefix.
//!
//! The three functions are declared here and libcrypto is linked by this crate's build
//! script: statically when the system has its archive (`libssl-dev` does), so no kiln command
//! loads and relocates the 5 MB shared library at start (~0.5-1 ms of every command).

use std::ffi::{c_int, c_void};

/// OpenSSL's `SHA256_CTX` (`openssl/sha.h`, unchanged since OpenSSL 0.9.8).
#[repr(C)]
#[derive(Clone, Copy)]
struct Sha256Context {
    h: [u32; 8],
    /// Low and high 32 bits of the number of bits hashed.
    nl: u32,
    nh: u32,
    data: [u32; 16],
    /// Bytes waiting in `data`.
    num: u32,
    md_len: u32,
}

unsafe extern "C" {
    fn SHA256_Init(context: *mut Sha256Context) -> c_int;
    fn SHA256_Update(context: *mut Sha256Context, data: *const c_void, length: usize) -> c_int;
    fn SHA256_Final(digest: *mut u8, context: *mut Sha256Context) -> c_int;
}

/// An incremental sha256, with the shape of `sha2::Sha256`'s everyday methods.
#[derive(Clone)]
pub struct Sha256 {
    context: Sha256Context,
}

/// The state of a [`Sha256`] after a whole number of 64-byte blocks: enough to go on hashing
/// a stream from that point without its first `length` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sha256Midstate {
    /// The eight working words after the blocks hashed so far.
    pub words: [u32; 8],
    /// Bytes hashed so far (a multiple of 64).
    pub length: u64,
}

impl Sha256 {
    pub fn new() -> Self {
        // SHA256_Init sets the zeroed context up.
        let mut context = Sha256Context {
            h: [0; 8],
            nl: 0,
            nh: 0,
            data: [0; 16],
            num: 0,
            md_len: 0,
        };
        // SAFETY: `context` is a valid, exclusively borrowed SHA256_CTX.
        unsafe { SHA256_Init(&mut context) };
        Sha256 { context }
    }

    pub fn update(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        // SAFETY: the context is initialized; `bytes` is valid for its length.
        unsafe { SHA256_Update(&mut self.context, bytes.as_ptr().cast(), bytes.len()) };
    }

    /// The hash of everything given to [`update`](Self::update).
    pub fn finalize(mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // SAFETY: the context is initialized; `out` has room for the 32-byte digest.
        unsafe { SHA256_Final(out.as_mut_ptr(), &mut self.context) };
        out
    }

    /// The hash of `bytes`.
    pub fn digest(bytes: impl AsRef<[u8]>) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(bytes);
        hasher.finalize()
    }

    /// Bytes hashed so far.
    pub fn length(&self) -> u64 {
        ((u64::from(self.context.nh) << 32) | u64::from(self.context.nl)) / 8
    }

    /// The state to [`resume`](Self::resume) from, when the bytes hashed so far are a whole
    /// number of 64-byte blocks (none waiting in the buffer); `None` otherwise.
    pub fn midstate(&self) -> Option<Sha256Midstate> {
        (self.context.num == 0).then(|| Sha256Midstate {
            words: self.context.h,
            length: self.length(),
        })
    }

    /// A hasher that goes on from `state`, as if the `state.length` bytes it was saved after
    /// had been given to [`update`](Self::update). `None` if `state.length` is not a multiple
    /// of 64 (no [`midstate`](Self::midstate) gives that).
    pub fn resume(state: &Sha256Midstate) -> Option<Self> {
        if !state.length.is_multiple_of(64) {
            return None;
        }
        let mut hasher = Sha256::new();
        let bits = state.length.wrapping_mul(8);
        hasher.context.h = state.words;
        hasher.context.nl = bits as u32;
        hasher.context.nh = (bits >> 32) as u32;
        Some(hasher)
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Sha256").finish_non_exhaustive()
    }
}

/// A writer that passes everything to `inner` and hashes it on a thread of its own, so that
/// hashing a large stream (a layer's tar: its diffID) overlaps with producing and writing it
/// instead of adding to it. Bytes are handed over in chunks of [`Self::CHUNK`].
pub struct PipelinedSha256Writer<W> {
    inner: W,
    pending: Vec<u8>,
    sender: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    hasher: Option<std::thread::JoinHandle<Sha256>>,
    /// Used instead when no thread could be started.
    inline: Option<Sha256>,
    written: u64,
}

/// A sha256 that saves its state each time the stream's length reaches a multiple of an
/// interval (a positive multiple of 64; none saves nothing).
#[derive(Debug, Clone)]
pub struct CheckpointingSha256 {
    hasher: Sha256,
    interval: Option<u64>,
    midstates: Vec<Sha256Midstate>,
}

impl CheckpointingSha256 {
    /// Goes on from `hasher` (fresh or [resumed](Sha256::resume)); lengths count from the
    /// start of the stream `hasher` began.
    pub fn new(hasher: Sha256, interval: Option<u64>) -> Self {
        CheckpointingSha256 {
            hasher,
            interval: interval.filter(|interval| *interval > 0 && interval % 64 == 0),
            midstates: Vec::new(),
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        let Some(interval) = self.interval else {
            self.hasher.update(bytes);
            return;
        };
        while !bytes.is_empty() {
            let to_boundary = interval - self.hasher.length() % interval;
            let take = usize::try_from(to_boundary).map_or(bytes.len(), |to| to.min(bytes.len()));
            self.hasher.update(&bytes[..take]);
            bytes = &bytes[take..];
            if self.hasher.length().is_multiple_of(interval) {
                // the interval is a multiple of the block size, so this is a block boundary
                self.midstates.extend(self.hasher.midstate());
            }
        }
    }

    /// The hash, and the states saved since [`new`](Self::new), in stream order.
    pub fn finish(self) -> ([u8; 32], Vec<Sha256Midstate>) {
        (self.hasher.finalize(), self.midstates)
    }
}

impl<W> PipelinedSha256Writer<W> {
    /// Bytes collected before a chunk goes to the hashing thread.
    pub const CHUNK: usize = 1 << 20;

    pub fn new(inner: W) -> Self {
        // a few chunks in flight: enough to keep the hasher busy, bounded memory
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let hasher = std::thread::Builder::new()
            .name("kiln-sha256".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                for chunk in receiver {
                    hasher.update(&chunk);
                }
                hasher
            });
        match hasher {
            Ok(handle) => PipelinedSha256Writer {
                inner,
                pending: Vec::with_capacity(Self::CHUNK),
                sender: Some(sender),
                hasher: Some(handle),
                inline: None,
                written: 0,
            },
            // no thread to be had: hash inline (the receiver is dropped with the closure)
            Err(_) => PipelinedSha256Writer {
                inner,
                pending: Vec::new(),
                sender: None,
                hasher: None,
                inline: Some(Sha256::new()),
                written: 0,
            },
        }
    }

    fn send_pending(&mut self) {
        if let Some(sender) = &self.sender {
            let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(Self::CHUNK));
            if sender.send(chunk).is_err() {
                self.sender = None;
            }
        }
    }

    /// The sha256 and size of everything written, and the inner writer.
    pub fn finish(mut self) -> (crate::Digest, u64, W) {
        self.send_pending();
        self.sender = None;
        let hasher = match (self.hasher.take(), self.inline.take()) {
            (Some(handle), _) => match handle.join() {
                Ok(hasher) => hasher,
                // the hashing thread only hashes: it cannot fail but by a panic
                Err(panic) => std::panic::resume_unwind(panic),
            },
            (None, Some(inline)) => inline,
            (None, None) => Sha256::new(),
        };
        (
            crate::Digest::from_sha256(hasher.finalize()),
            self.written,
            self.inner,
        )
    }
}

impl<W: std::io::Write> std::io::Write for PipelinedSha256Writer<W> {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buffer)?;
        self.written += written as u64;
        if let Some(inline) = &mut self.inline {
            inline.update(&buffer[..written]);
            return Ok(written);
        }
        self.pending.extend_from_slice(&buffer[..written]);
        if self.pending.len() >= Self::CHUNK {
            self.send_pending();
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::Sha256;

    #[test]
    fn known_answers() {
        assert_eq!(
            hex::encode(Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut incremental = Sha256::new();
        incremental.update(b"ab");
        incremental.update(b"c");
        assert_eq!(
            hex::encode(incremental.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_midstate_resumes_the_stream() {
        let data: Vec<u8> = (0..100_000u32).map(|index| (index % 253) as u8).collect();
        let whole = Sha256::digest(&data);
        let mut first = Sha256::new();
        first.update(&data[..6400]);
        assert_eq!(first.length(), 6400);
        let state = first.midstate().unwrap();
        let mut resumed = Sha256::resume(&state).unwrap();
        resumed.update(&data[6400..]);
        assert_eq!(resumed.finalize(), whole);
        // mid-block: no midstate, and a length off the block size is refused
        first.update(&data[6400..6401]);
        assert_eq!(first.midstate(), None);
        let odd = super::Sha256Midstate {
            words: state.words,
            length: 6401,
        };
        assert!(Sha256::resume(&odd).is_none());
    }

    #[test]
    fn checkpointing_hasher_saves_and_resumes_midstates() {
        use super::CheckpointingSha256;
        let data: Vec<u8> = (0..(5 * (1usize << 20) + 999))
            .map(|index| (index % 241) as u8)
            .collect();
        let interval = 1 << 20;
        let mut hasher = CheckpointingSha256::new(Sha256::new(), Some(interval));
        for piece in data.chunks(300_001) {
            hasher.update(piece);
        }
        let (digest, midstates) = hasher.finish();
        assert_eq!(
            crate::Digest::from_sha256(digest),
            crate::Digest::of_bytes(&data)
        );
        let lengths: Vec<u64> = midstates.iter().map(|state| state.length).collect();
        assert_eq!(lengths, [1 << 20, 2 << 20, 3 << 20, 4 << 20, 5 << 20]);
        // resumed from the third: the same hash, and the same states after it
        let state = midstates[2];
        let start = state.length as usize;
        let mut resumed = CheckpointingSha256::new(Sha256::resume(&state).unwrap(), Some(interval));
        resumed.update(&data[start..start + 10]);
        resumed.update(&data[start + 10..]);
        let (digest, later) = resumed.finish();
        assert_eq!(
            crate::Digest::from_sha256(digest),
            crate::Digest::of_bytes(&data)
        );
        assert_eq!(later, midstates[3..]);
    }

    #[test]
    fn pipelined_writer_hashes_what_passes_through() {
        use std::io::Write as _;
        let data: Vec<u8> = (0..(3 * super::PipelinedSha256Writer::<Vec<u8>>::CHUNK + 12345))
            .map(|index| (index % 251) as u8)
            .collect();
        let mut writer = super::PipelinedSha256Writer::new(Vec::new());
        for piece in data.chunks(70_000) {
            writer.write_all(piece).unwrap();
        }
        let (digest, size, inner) = writer.finish();
        assert_eq!(inner, data);
        assert_eq!(size, data.len() as u64);
        assert_eq!(digest, crate::Digest::of_bytes(&data));
    }
}
