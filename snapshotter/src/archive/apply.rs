//! Applying a layer tar into a directory: streamed, hashed (diffID) on the way, with every
//! path confined to the destination.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;

use kiln_types::Digest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::compression::{decompressing_reader, is_size_limit, CountingReader, HashingReader};
use super::path::{clean_entry_path, join, split_parent};
use super::root::{chmod_path_fd, list_names, lstat_at, proc_path, remove_at, Root};
use super::tar_reader::{TarEntry, TarReader};
use super::{
    display_path, ArchiveError, Compression, OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX,
};

/// Buffer for copying file contents.
const COPY_BUFFER: usize = 1 << 20;

/// What to do with OCI whiteouts (`.wh.NAME`, `DIR/.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// The destination is a fresh snapshot directory used as an overlayfs lower: a whiteout
    /// becomes a character device 0/0 named `NAME`, an opaque marker becomes the xattr
    /// `trusted.overlay.opaque=y` on the directory.
    #[default]
    Overlay,
    /// The destination holds the layers below (flattening a rootfs, `type=local` export):
    /// whiteouts delete, opaque markers delete what this layer did not put in the directory.
    Apply,
    /// Whiteout names are ordinary files (ADD of a local archive, as Docker does).
    Keep,
}

/// How to apply a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    pub whiteout_mode: WhiteoutMode,
    /// Fail with [`ArchiveError::DiffIdMismatch`] unless the uncompressed stream hashes to
    /// this (the image config's `rootfs.diff_ids` entry).
    pub expected_diff_id: Option<Digest>,
    /// Stop with [`ArchiveError::TooLarge`] once the uncompressed stream passes this many
    /// bytes (a gzip bomb stops here, not when the disk is full).
    pub max_uncompressed_size: Option<u64>,
    /// Set owners from the tar (needs root); otherwise files belong to the caller.
    pub preserve_owners: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            whiteout_mode: WhiteoutMode::Overlay,
            expected_diff_id: None,
            max_uncompressed_size: None,
            preserve_owners: true,
        }
    }
}

impl ApplyOptions {
    /// Default options with the given whiteout mode.
    pub fn new(whiteout_mode: WhiteoutMode) -> Self {
        ApplyOptions {
            whiteout_mode,
            ..ApplyOptions::default()
        }
    }
}

/// What applying a layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLayer {
    /// sha256 of the whole uncompressed stream, trailing padding included.
    pub diff_id: Digest,
    /// Bytes of uncompressed stream.
    pub uncompressed_size: u64,
    /// Bytes read from the (compressed) source.
    pub compressed_size: u64,
    /// Tar entries applied (PAX global headers not counted).
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// xattrs the destination filesystem does not support (ENOTSUP), left out.
    pub xattrs_unsupported: u64,
}

/// Applies a layer tar (uncompressed, gzip or zstd) read from `reader` into the existing
/// directory `dest`. The diffID is the sha256 of the whole uncompressed stream, read to its
/// end. On error the destination holds a partial layer: the caller discards it.
pub fn apply_layer<R: Read + Send>(
    reader: R,
    compression: Compression,
    dest: &Path,
    options: &ApplyOptions,
) -> Result<AppliedLayer, ArchiveError> {
    let root = Root::open(dest).map_err(|error| ArchiveError::Filesystem {
        operation: "opening the destination",
        path: dest.display().to_string(),
        source: error,
    })?;
    let mut unpacker = Unpacker::new(root, options);
    let limit = options.max_uncompressed_size;
    let read_error = |error: io::Error| match limit {
        Some(limit) if is_size_limit(&error) => ArchiveError::TooLarge { limit },
        _ => ArchiveError::Read(error),
    };

    // Two threads: one reads, decompresses and hashes the stream, the other parses the tar
    // and writes files. On the machines kiln targets that keeps decompression and sha256
    // (user time) off the path of the filesystem syscalls (system time).
    let (diff_id, uncompressed_size, compressed_size) = std::thread::scope(|scope| {
        let (chunks, received) = mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPELINE_DEPTH);
        let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
        let producer = scope.spawn(move || -> Option<(Digest, u64, u64)> {
            let counting = CountingReader {
                inner: reader,
                count: 0,
            };
            let decompressed = match decompressing_reader(counting, compression) {
                Ok(decompressed) => decompressed,
                Err(error) => {
                    let _ = chunks.send(Err(error));
                    return None;
                }
            };
            let mut hashing = HashingReader::new(decompressed, limit);
            loop {
                let mut chunk = recycled.try_recv().unwrap_or_default();
                chunk.resize(CHUNK_SIZE, 0);
                let read = match read_full(&mut hashing, &mut chunk) {
                    Ok(read) => read,
                    Err(error) => {
                        let _ = chunks.send(Err(error));
                        return None;
                    }
                };
                if read == 0 {
                    break;
                }
                chunk.truncate(read);
                if chunks.send(Ok(chunk)).is_err() {
                    // The unpacker stopped (an error): nothing more to do.
                    return None;
                }
            }
            let (diff_id, size, decompressed) = hashing.finish();
            Some((diff_id, size, decompressed.into_inner().count))
        });

        let consumer = || -> Result<(), ArchiveError> {
            let mut reader = TarReader::new(ChunkReader {
                chunks: received,
                recycle,
                current: Vec::new(),
                position: 0,
            });
            while let Some(entry) = reader.next_entry().map_err(read_error)? {
                unpacker
                    .entry(&mut reader, entry)
                    .map_err(|error| match error {
                        ArchiveError::Read(error) => read_error(error),
                        other => other,
                    })?;
            }
            // The tar's end-of-archive marker (and any padding after it) is part of the
            // stream the diffID covers: read everything to the end.
            io::copy(&mut reader.into_inner(), &mut io::sink()).map_err(read_error)?;
            Ok(())
        };
        let consumed = consumer();
        // On an error the receiver is gone, so the producer stops at its next send.
        let produced = producer.join();
        consumed?;
        match produced {
            Ok(Some(result)) => Ok(result),
            // A producer error was sent down the channel and reported by the consumer.
            Ok(None) => Err(ArchiveError::Read(io::Error::other("layer stream stopped"))),
            Err(_) => Err(ArchiveError::Read(io::Error::other(
                "the layer reading thread panicked",
            ))),
        }
    })?;
    unpacker.finish()?;
    if let Some(expected) = &options.expected_diff_id {
        if *expected != diff_id {
            return Err(ArchiveError::DiffIdMismatch {
                expected: expected.clone(),
                found: diff_id,
            });
        }
    }
    Ok(AppliedLayer {
        diff_id,
        uncompressed_size,
        compressed_size,
        entries: unpacker.entries,
        whiteouts: unpacker.whiteouts,
        xattrs_unsupported: unpacker.xattrs_unsupported,
    })
}

/// Chunks handed from the decompressing thread to the unpacking one.
const CHUNK_SIZE: usize = 1 << 20;
/// Chunks in flight between the threads (bounds the memory used to a few MiB).
const PIPELINE_DEPTH: usize = 4;

/// Fills `buffer` as far as the stream allows; fewer bytes only at its end.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Reads the chunks the decompressing thread sends, returning spent buffers to it.
struct ChunkReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    let spent = std::mem::replace(&mut self.current, chunk);
                    let _ = self.recycle.send(spent);
                    self.position = 0;
                }
                Ok(Err(error)) => return Err(error),
                // The producer finished: end of stream.
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let available = &self.current[self.position..];
        let count = available.len().min(buffer.len());
        buffer[..count].copy_from_slice(&available[..count]);
        self.position += count;
        Ok(count)
    }
}

/// The header facts of one entry, PAX records applied.
struct Metadata {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn filesystem(operation: &'static str, path: &[u8], error: impl Into<io::Error>) -> ArchiveError {
    ArchiveError::Filesystem {
        operation,
        path: display_path(path),
        source: error.into(),
    }
}

fn invalid(path: &[u8], reason: impl Into<String>) -> ArchiveError {
    ArchiveError::InvalidEntry {
        path: display_path(path),
        reason: reason.into(),
    }
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

struct Unpacker {
    root: Root,
    whiteout_mode: WhiteoutMode,
    preserve_owners: bool,
    /// Paths this layer put in place, and their parents (only kept in `Apply` mode, where an
    /// opaque marker deletes everything else in its directory).
    unpacked: Option<HashSet<Vec<u8>>>,
    /// Directory times, set last: writing into a directory changes its mtime.
    directory_times: Vec<(Vec<u8>, Timestamps)>,
    buffer: Vec<u8>,
    entries: u64,
    whiteouts: u64,
    xattrs_unsupported: u64,
}

impl Unpacker {
    fn new(root: Root, options: &ApplyOptions) -> Self {
        Unpacker {
            root,
            whiteout_mode: options.whiteout_mode,
            preserve_owners: options.preserve_owners,
            unpacked: (options.whiteout_mode == WhiteoutMode::Apply).then(HashSet::new),
            directory_times: Vec::new(),
            buffer: vec![0u8; COPY_BUFFER],
            entries: 0,
            whiteouts: 0,
            xattrs_unsupported: 0,
        }
    }

    fn entry<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        entry: TarEntry,
    ) -> Result<(), ArchiveError> {
        let raw_path = &entry.path;
        let path = clean_entry_path(raw_path).map_err(|reason| ArchiveError::UnsafePath {
            path: display_path(raw_path),
            reason,
        })?;
        let metadata = Self::metadata(&entry)?;
        self.entries += 1;

        let (parent, name) = split_parent(&path);
        if self.whiteout_mode != WhiteoutMode::Keep && name.starts_with(WHITEOUT_PREFIX.as_bytes())
        {
            self.whiteouts += 1;
            return self.whiteout(parent, name, raw_path, &metadata);
        }

        let is_directory = entry.kind == b'5';
        if path.is_empty() {
            if !is_directory {
                return Err(ArchiveError::UnsafePath {
                    path: display_path(raw_path),
                    reason: "only a directory entry may name the destination itself",
                });
            }
            return self.root_directory(metadata);
        }
        if let Some(unpacked) = &mut self.unpacked {
            let mut current: &[u8] = &path;
            while !current.is_empty() && unpacked.insert(current.to_vec()) {
                current = split_parent(current).0;
            }
        }

        let parent_fd = self
            .root
            .parent(parent)
            .map_err(|error| filesystem("creating the parent directory of", &path, error))?;
        let parent_fd = parent_fd.as_fd();
        match entry.kind {
            b'5' => self.directory(parent_fd, name, path.clone(), metadata),
            b'0' => self.regular_file(parent_fd, name, &path, reader, metadata),
            b'2' => {
                let target = &entry.link_name;
                if target.is_empty() || target.contains(&0) {
                    return Err(invalid(raw_path, "symlink target is empty or has a NUL"));
                }
                self.symlink(parent_fd, name, &path, target, metadata)
            }
            b'1' => self.hardlink(parent_fd, name, &path, &entry.link_name),
            b'3' | b'4' | b'6' => {
                let file_type = match entry.kind {
                    b'3' => FileType::CharacterDevice,
                    b'4' => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let device = rustix::fs::makedev(entry.device_major, entry.device_minor);
                self.node(parent_fd, name, &path, file_type, device, metadata)
            }
            other => Err(ArchiveError::UnsupportedEntryType {
                path: display_path(raw_path),
                entry_type: char::from(other),
            }),
        }
    }

    fn metadata(entry: &TarEntry) -> Result<Metadata, ArchiveError> {
        let raw_path = &entry.path;
        let mut xattrs = Vec::with_capacity(entry.xattrs.len());
        for (name, value) in &entry.xattrs {
            if name.is_empty() || name.contains(&0) {
                return Err(invalid(raw_path, "invalid xattr name"));
            }
            // overlayfs' own xattrs come only from whiteout entries, never from a tar: a
            // layer must not redirect lookups or fake opaque directories.
            if !is_overlay_xattr(name) {
                xattrs.push((name.clone(), value.clone()));
            }
        }
        // u32::MAX is -1, "leave unchanged", to chown: not an owner.
        let uid = u32::try_from(entry.uid)
            .ok()
            .filter(|uid| *uid != u32::MAX)
            .ok_or_else(|| invalid(raw_path, format!("uid {} out of range", entry.uid)))?;
        let gid = u32::try_from(entry.gid)
            .ok()
            .filter(|gid| *gid != u32::MAX)
            .ok_or_else(|| invalid(raw_path, format!("gid {} out of range", entry.gid)))?;
        let mtime = entry.mtime;
        // As Docker: the access time is the later of atime and mtime.
        let atime = entry.atime.map_or(mtime, |atime| atime.max(mtime));
        Ok(Metadata {
            mode: entry.mode,
            uid,
            gid,
            times: Timestamps {
                last_access: atime,
                last_modification: mtime,
            },
            xattrs,
        })
    }

    fn finish(&mut self) -> Result<(), ArchiveError> {
        for (path, times) in std::mem::take(&mut self.directory_times) {
            // A later entry may have replaced the directory: then there is nothing to date.
            let fd = match self.root.open_dir(&path, OFlags::RDONLY | OFlags::NOFOLLOW) {
                Ok(fd) => fd,
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(error) => return Err(filesystem("opening", &path, error)),
            };
            rustix::fs::futimens(&fd, &times)
                .map_err(|errno| filesystem("setting times of", &path, errno))?;
        }
        Ok(())
    }

    fn set_owner_fd(
        &self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        meta: &Metadata,
    ) -> Result<(), ArchiveError> {
        if self.preserve_owners {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(|errno| filesystem("changing the owner of", path, errno))?;
        }
        Ok(())
    }

    fn set_owner_at(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        meta: &Metadata,
    ) -> Result<(), ArchiveError> {
        if self.preserve_owners {
            rustix::fs::chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|errno| filesystem("changing the owner of", path, errno))?;
        }
        Ok(())
    }

    /// Sets xattrs on an open file or directory.
    fn set_xattrs_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        meta: &Metadata,
    ) -> Result<(), ArchiveError> {
        for (name, value) in &meta.xattrs {
            match rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP) => self.xattrs_unsupported += 1,
                Err(errno) => return Err(filesystem("setting xattrs of", path, errno)),
            }
        }
        Ok(())
    }

    /// Sets xattrs on a name that cannot be opened for it (symlink, device, fifo).
    fn set_xattrs_at(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        meta: &Metadata,
    ) -> Result<(), ArchiveError> {
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        let target = proc_path(parent, name);
        for (xattr_name, value) in &meta.xattrs {
            match rustix::fs::lsetxattr(
                target.as_slice(),
                xattr_name.as_slice(),
                value,
                XattrFlags::empty(),
            ) {
                Ok(()) => {}
                Err(Errno::NOTSUP) => self.xattrs_unsupported += 1,
                Err(errno) => return Err(filesystem("setting xattrs of", path, errno)),
            }
        }
        Ok(())
    }

    fn root_directory(&mut self, meta: Metadata) -> Result<(), ArchiveError> {
        let fd = self
            .root
            .open_dir(b"", OFlags::RDONLY)
            .map_err(|error| filesystem("opening", b".", error))?;
        self.set_owner_fd(fd.as_fd(), b".", &meta)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
            .map_err(|errno| filesystem("changing the mode of", b".", errno))?;
        self.set_xattrs_fd(fd.as_fd(), b".", &meta)?;
        self.directory_times.push((Vec::new(), meta.times));
        Ok(())
    }

    fn directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: Vec<u8>,
        meta: Metadata,
    ) -> Result<(), ArchiveError> {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let stat = lstat_at(parent, name)
                    .map_err(|error| filesystem("reading metadata of", &path, error))?;
                if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                    remove_at(parent, name)
                        .map_err(|error| filesystem("replacing", &path, error))?;
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(|errno| filesystem("creating directory", &path, errno))?;
                }
            }
            Err(errno) => return Err(filesystem("creating directory", &path, errno)),
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| filesystem("opening", &path, errno))?;
        self.set_owner_fd(fd.as_fd(), &path, &meta)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
            .map_err(|errno| filesystem("changing the mode of", &path, errno))?;
        self.set_xattrs_fd(fd.as_fd(), &path, &meta)?;
        self.directory_times.push((path, meta.times));
        Ok(())
    }

    fn regular_file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        reader: &mut TarReader<R>,
        meta: Metadata,
    ) -> Result<(), ArchiveError> {
        let create = || -> Result<OwnedFd, Errno> {
            rustix::fs::openat(
                parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(meta.mode & 0o777),
            )
        };
        // O_EXCL|O_NOFOLLOW: an existing name (a symlink, a hardlink, anything) is removed
        // and replaced, never written through.
        let fd = match create() {
            Ok(fd) => fd,
            Err(Errno::EXIST) => {
                remove_at(parent, name).map_err(|error| filesystem("replacing", path, error))?;
                create().map_err(|errno| filesystem("creating", path, errno))?
            }
            Err(errno) => return Err(filesystem("creating", path, errno)),
        };
        let mut file = File::from(fd);
        loop {
            let read = reader
                .read_data(&mut self.buffer)
                .map_err(ArchiveError::Read)?;
            if read == 0 {
                break;
            }
            file.write_all(&self.buffer[..read])
                .map_err(|error| filesystem("writing", path, error))?;
        }
        // Owner before mode (chown clears setuid/setgid), xattrs after both (chown clears
        // security.capability), times last.
        self.set_owner_fd(file.as_fd(), path, &meta)?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
            .map_err(|errno| filesystem("changing the mode of", path, errno))?;
        self.set_xattrs_fd(file.as_fd(), path, &meta)?;
        rustix::fs::futimens(&file, &meta.times)
            .map_err(|errno| filesystem("setting times of", path, errno))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        target: &[u8],
        meta: Metadata,
    ) -> Result<(), ArchiveError> {
        match rustix::fs::symlinkat(target, parent, name) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                remove_at(parent, name).map_err(|error| filesystem("replacing", path, error))?;
                rustix::fs::symlinkat(target, parent, name)
                    .map_err(|errno| filesystem("creating symlink", path, errno))?;
            }
            Err(errno) => return Err(filesystem("creating symlink", path, errno)),
        }
        // Everything below acts on the link itself, never on what it points to.
        self.set_owner_at(parent, name, path, &meta)?;
        self.set_xattrs_at(parent, name, path, &meta)?;
        rustix::fs::utimensat(parent, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| filesystem("setting times of", path, errno))?;
        Ok(())
    }

    fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        raw_target: &[u8],
    ) -> Result<(), ArchiveError> {
        let unsafe_target = |reason| ArchiveError::UnsafePath {
            path: format!("{} -> {}", display_path(path), display_path(raw_target)),
            reason,
        };
        let target = clean_entry_path(raw_target).map_err(unsafe_target)?;
        if target.is_empty() {
            return Err(unsafe_target(
                "a hardlink cannot point at the destination itself",
            ));
        }
        if target == path {
            return Ok(());
        }
        let (target_parent, target_name) = split_parent(&target);
        let target_parent_fd = self
            .root
            .open_dir(target_parent, OFlags::PATH)
            .map_err(|error| filesystem("resolving hardlink target", &target, error))?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        let link = || {
            rustix::fs::linkat(
                &target_parent_fd,
                target_name,
                parent,
                name,
                AtFlags::empty(),
            )
        };
        match link() {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => {
                remove_at(parent, name).map_err(|error| filesystem("replacing", path, error))?;
                link().map_err(|errno| filesystem("creating hardlink", path, errno))
            }
            Err(errno) => Err(filesystem("creating hardlink", path, errno)),
        }
    }

    fn node(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        file_type: FileType,
        device: rustix::fs::Dev,
        meta: Metadata,
    ) -> Result<(), ArchiveError> {
        let make = || {
            rustix::fs::mknodat(
                parent,
                name,
                file_type,
                Mode::from_raw_mode(meta.mode & 0o777),
                device,
            )
        };
        match make() {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                remove_at(parent, name).map_err(|error| filesystem("replacing", path, error))?;
                make().map_err(|errno| filesystem("creating device node", path, errno))?;
            }
            Err(errno) => return Err(filesystem("creating device node", path, errno)),
        }
        self.set_owner_at(parent, name, path, &meta)?;
        // chmod through an O_PATH descriptor of the node just made: never a symlink's target.
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| filesystem("opening", path, errno))?;
        let stat = rustix::fs::fstat(&fd)
            .map_err(|errno| filesystem("reading metadata of", path, errno))?;
        if FileType::from_raw_mode(stat.st_mode) != file_type {
            return Err(filesystem(
                "changing the mode of",
                path,
                io::Error::other("the node was replaced while being created"),
            ));
        }
        chmod_path_fd(fd.as_fd(), meta.mode)
            .map_err(|error| filesystem("changing the mode of", path, error))?;
        self.set_xattrs_at(parent, name, path, &meta)?;
        rustix::fs::utimensat(parent, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| filesystem("setting times of", path, errno))?;
        Ok(())
    }

    fn whiteout(
        &mut self,
        parent: &[u8],
        name: &[u8],
        raw_path: &[u8],
        meta: &Metadata,
    ) -> Result<(), ArchiveError> {
        if name == WHITEOUT_OPAQUE.as_bytes() {
            return self.opaque(parent, raw_path);
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.*` names are AUFS bookkeeping (hardlink dirs): Docker skips them.
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(ArchiveError::InvalidWhiteout {
                path: display_path(raw_path),
            });
        }
        let target_path = join(parent, target);
        match self.whiteout_mode {
            WhiteoutMode::Overlay => {
                let parent_fd = self.root.parent(parent).map_err(|error| {
                    filesystem("creating the parent directory of", &target_path, error)
                })?;
                remove_at(parent_fd.as_fd(), target)
                    .map_err(|error| filesystem("replacing", &target_path, error))?;
                rustix::fs::mknodat(
                    &parent_fd,
                    target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|errno| filesystem("creating whiteout", &target_path, errno))?;
                self.set_owner_at(parent_fd.as_fd(), target, &target_path, meta)?;
                rustix::fs::utimensat(&parent_fd, target, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|errno| filesystem("setting times of", &target_path, errno))
            }
            WhiteoutMode::Apply => {
                // Removal may take a directory the cached parent lies under.
                self.root.forget_cached_parent();
                let parent_fd = match self.root.open_dir(parent, OFlags::PATH) {
                    Ok(fd) => fd,
                    Err(error)
                        if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
                    {
                        return Ok(())
                    }
                    Err(error) => return Err(filesystem("opening", parent, error)),
                };
                remove_at(parent_fd.as_fd(), target)
                    .map_err(|error| filesystem("removing", &target_path, error))
            }
            WhiteoutMode::Keep => Ok(()),
        }
    }

    fn opaque(&mut self, parent: &[u8], raw_path: &[u8]) -> Result<(), ArchiveError> {
        match self.whiteout_mode {
            WhiteoutMode::Overlay => {
                self.root
                    .ensure_dir(parent)
                    .map_err(|error| filesystem("creating directory", parent, error))?;
                let fd = self
                    .root
                    .open_dir(parent, OFlags::RDONLY)
                    .map_err(|error| filesystem("opening", parent, error))?;
                rustix::fs::fsetxattr(&fd, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(|errno| filesystem("marking opaque", raw_path, errno))
            }
            WhiteoutMode::Apply => {
                self.root.forget_cached_parent();
                let fd = match self.root.open_dir(parent, OFlags::RDONLY) {
                    Ok(fd) => fd,
                    Err(error)
                        if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
                    {
                        return Ok(())
                    }
                    Err(error) => return Err(filesystem("opening", parent, error)),
                };
                self.clear_opaque(fd.as_fd(), parent)
            }
            WhiteoutMode::Keep => Ok(()),
        }
    }

    /// Removes from a directory everything this layer did not put there.
    fn clear_opaque(&self, dir: BorrowedFd<'_>, dir_path: &[u8]) -> Result<(), ArchiveError> {
        let names = list_names(dir).map_err(|error| filesystem("listing", dir_path, error))?;
        let unpacked = self.unpacked.as_ref();
        for (name, file_type) in names {
            let child_path = join(dir_path, name.as_bytes());
            let kept = unpacked.is_some_and(|set| set.contains(&child_path));
            if !kept {
                remove_at(dir, name.as_bytes())
                    .map_err(|error| filesystem("removing", &child_path, error))?;
                continue;
            }
            let is_directory = match file_type {
                FileType::Directory => true,
                FileType::Unknown => lstat_at(dir, name.as_bytes())
                    .map(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory)
                    .map_err(|error| filesystem("reading metadata of", &child_path, error))?,
                _ => false,
            };
            if is_directory {
                let child = rustix::fs::openat(
                    dir,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|errno| filesystem("opening", &child_path, errno))?;
                self.clear_opaque(child.as_fd(), &child_path)?;
            }
        }
        Ok(())
    }
}
