//! Writing a layer tar from an overlayfs upper directory (or a plain directory tree).
//!
//! The walk goes depth first with each directory's names sorted bytewise, so parents come
//! before their children and the same tree always gives the same bytes. In an upper
//! directory, a character device 0/0 is a deletion and becomes `.wh.NAME`; a directory with
//! `trusted.overlay.opaque=y` (or `user.overlay.opaque=y`) becomes the directory entry followed
//! by `DIR/.wh..wh..opq`. Files linked more than once inside the tree stay hardlinks.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use kiln_types::{Digest, PipelinedSha256Writer};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::path::join;
use super::root::{list_names, proc_path};
use super::tar_writer::{kind, DataError, EntryHeader, TarWriter};
use super::{
    display_path, ArchiveError, OVERLAY_OPAQUE_XATTR, OVERLAY_USER_OPAQUE_XATTR, WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
};

/// Output buffer between the walk and the sink (hashing and compression work in big chunks).
const OUTPUT_BUFFER: usize = 1 << 20;
/// Read buffer for file contents.
const COPY_BUFFER: usize = 1 << 20;

/// Options for writing a layer tar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// SOURCE_DATE_EPOCH: entries newer than this (seconds since the epoch) get this mtime,
    /// for reproducible layers.
    pub source_date_epoch: Option<i64>,
}

/// What writing a layer tar produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffStats {
    /// sha256 of the tar stream written (the layer's diffID when written uncompressed).
    pub diff_id: Digest,
    /// Bytes of tar written.
    pub size: u64,
    /// Entries written (whiteouts and opaque markers included).
    pub entries: u64,
    /// `.wh.NAME` entries written for deletions.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries written for opaque directories.
    pub opaque_dirs: u64,
    /// Entries written as hardlinks to an earlier entry.
    pub hardlinks: u64,
    /// Sockets skipped (a tar cannot hold them; Docker skips them too).
    pub skipped_sockets: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalkMode {
    /// An overlayfs upper: whiteout devices and opaque xattrs are translated.
    Upper,
    /// A plain tree: everything is written as it is.
    Tree,
}

/// Writes the layer tar of an overlayfs upper directory (not the merged view) to `writer`.
/// Returns the stream's digest (the diffID) and counts.
pub fn write_layer_from_upper<W: Write>(
    upper: &Path,
    writer: W,
    options: &DiffOptions,
) -> Result<DiffStats, ArchiveError> {
    write_layer(upper, writer, options, WalkMode::Upper)
}

/// Writes a plain directory tree as a tar, with no whiteout translation (`type=tar` export,
/// `COPY --link` layers). The root directory itself gets no entry.
pub fn write_tree<W: Write>(
    dir: &Path,
    writer: W,
    options: &DiffOptions,
) -> Result<DiffStats, ArchiveError> {
    write_layer(dir, writer, options, WalkMode::Tree)
}

pub(crate) fn write_layer<W: Write>(
    dir: &Path,
    writer: W,
    options: &DiffOptions,
    mode: WalkMode,
) -> Result<DiffStats, ArchiveError> {
    // the diffID is hashed on a thread of its own, beside the walk and the writes
    let (counts, hashing) = write_entries(dir, PipelinedSha256Writer::new(writer), options, mode)?;
    let (diff_id, size, _writer) = hashing.finish();
    Ok(counts.into_stats(diff_id, size))
}

/// Writes the tar of `dir` to `writer` (through a large buffer) and returns the counts and
/// the writer.
pub(crate) fn write_entries<W: Write>(
    dir: &Path,
    writer: W,
    options: &DiffOptions,
    mode: WalkMode,
) -> Result<(Counts, W), ArchiveError> {
    write_entries_buffered(dir, writer, options, mode, OUTPUT_BUFFER)
}

/// [`write_entries`] with an output buffer of `buffer` bytes (0 for a writer that gathers
/// small writes itself, saving a copy of every byte).
pub(crate) fn write_entries_buffered<W: Write>(
    dir: &Path,
    writer: W,
    options: &DiffOptions,
    mode: WalkMode,
    buffer: usize,
) -> Result<(Counts, W), ArchiveError> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| filesystem("opening", dir.as_os_str().as_encoded_bytes(), errno))?;
    let out = BufWriter::with_capacity(buffer, writer);
    let mut walker = Walker {
        tar: TarWriter::new(out),
        mode,
        epoch: options.source_date_epoch,
        links: HashMap::new(),
        buffer: vec![0u8; COPY_BUFFER],
        xattr_names: vec![0u8; 4096],
        xattr_value: vec![0u8; 4096],
        stats: Counts::default(),
    };
    walker.walk(root.as_fd(), b"")?;
    let Walker { tar, stats, .. } = walker;
    let out = tar.finish().map_err(ArchiveError::Write)?;
    let writer = out
        .into_inner()
        .map_err(|error| ArchiveError::Write(error.into_error()))?;
    Ok((stats, writer))
}

fn filesystem(operation: &'static str, path: &[u8], error: impl Into<io::Error>) -> ArchiveError {
    ArchiveError::Filesystem {
        operation,
        path: display_path(path),
        source: error.into(),
    }
}

#[derive(Default)]
pub(crate) struct Counts {
    entries: u64,
    whiteouts: u64,
    opaque_dirs: u64,
    hardlinks: u64,
    skipped_sockets: u64,
}

impl Counts {
    pub(crate) fn into_stats(self, diff_id: Digest, size: u64) -> DiffStats {
        DiffStats {
            diff_id,
            size,
            entries: self.entries,
            whiteouts: self.whiteouts,
            opaque_dirs: self.opaque_dirs,
            hardlinks: self.hardlinks,
            skipped_sockets: self.skipped_sockets,
        }
    }
}

struct Walker<W: Write> {
    tar: TarWriter<W>,
    mode: WalkMode,
    epoch: Option<i64>,
    /// (device, inode) of files with more than one link -> the first path written.
    links: HashMap<(u64, u64), Vec<u8>>,
    buffer: Vec<u8>,
    xattr_names: Vec<u8>,
    xattr_value: Vec<u8>,
    stats: Counts,
}

/// xattr names and values, sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Where to read a file's xattrs from.
enum XattrSource<'a> {
    /// An open descriptor (regular files, directories).
    Fd(BorrowedFd<'a>),
    /// A `/proc/self/fd/N/name` path, not followed at its end (symlinks, devices, fifos).
    Path(Vec<u8>),
}

impl<W: Write> Walker<W> {
    fn clamp(&self, mtime: i64) -> i64 {
        match self.epoch {
            Some(epoch) if mtime > epoch => epoch,
            _ => mtime,
        }
    }

    fn header(&mut self, entry: &EntryHeader<'_>) -> Result<(), ArchiveError> {
        self.stats.entries += 1;
        self.tar.write_header(entry).map_err(ArchiveError::Write)
    }

    fn walk(&mut self, dir: BorrowedFd<'_>, path: &[u8]) -> Result<(), ArchiveError> {
        let mut names = list_names(dir).map_err(|error| filesystem("listing", path, error))?;
        names.sort_unstable_by(|left, right| left.0.as_bytes().cmp(right.0.as_bytes()));
        for (name, _) in names {
            self.entry(dir, path, &name)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: &[u8],
        name: &CString,
    ) -> Result<(), ArchiveError> {
        let name = name.as_bytes();
        let path = join(parent, name);
        let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| filesystem("reading metadata of", &path, errno))?;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        let mode = stat.st_mode & 0o7777;
        let mtime = self.clamp(stat.st_mtime);
        let uid = u64::from(stat.st_uid);
        let gid = u64::from(stat.st_gid);

        if self.mode == WalkMode::Upper
            && file_type == FileType::CharacterDevice
            && stat.st_rdev == 0
        {
            let mut whiteout = WHITEOUT_PREFIX.as_bytes().to_vec();
            whiteout.extend_from_slice(name);
            let whiteout = join(parent, &whiteout);
            self.stats.whiteouts += 1;
            return self.header(&EntryHeader {
                path: &whiteout,
                kind: kind::REGULAR,
                mode: 0,
                uid: 0,
                gid: 0,
                size: 0,
                mtime,
                link_name: b"",
                device_major: 0,
                device_minor: 0,
                xattrs: &[],
            });
        }

        match file_type {
            FileType::Directory => {
                let child = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|errno| filesystem("opening", &path, errno))?;
                let (xattrs, opaque) = self.xattrs(XattrSource::Fd(child.as_fd()), &path)?;
                let mut dir_path = path.clone();
                dir_path.push(b'/');
                self.header(&EntryHeader {
                    path: &dir_path,
                    kind: kind::DIRECTORY,
                    mode,
                    uid,
                    gid,
                    size: 0,
                    mtime,
                    link_name: b"",
                    device_major: 0,
                    device_minor: 0,
                    xattrs: &xattrs,
                })?;
                if opaque {
                    let marker = join(&path, WHITEOUT_OPAQUE.as_bytes());
                    self.stats.opaque_dirs += 1;
                    self.header(&EntryHeader {
                        path: &marker,
                        kind: kind::REGULAR,
                        mode: 0,
                        uid: 0,
                        gid: 0,
                        size: 0,
                        mtime,
                        link_name: b"",
                        device_major: 0,
                        device_minor: 0,
                        xattrs: &[],
                    })?;
                }
                self.walk(child.as_fd(), &path)
            }
            FileType::RegularFile => {
                if stat.st_nlink > 1 {
                    let key = (stat.st_dev, stat.st_ino);
                    if let Some(first) = self.links.get(&key) {
                        let first = first.clone();
                        self.stats.hardlinks += 1;
                        return self.header(&EntryHeader {
                            path: &path,
                            kind: kind::HARDLINK,
                            mode,
                            uid,
                            gid,
                            size: 0,
                            mtime,
                            link_name: &first,
                            device_major: 0,
                            device_minor: 0,
                            xattrs: &[],
                        });
                    }
                    self.links.insert(key, path.clone());
                }
                let file: OwnedFd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOATIME,
                    Mode::empty(),
                )
                .or_else(|errno| {
                    // O_NOATIME needs file ownership or CAP_FOWNER.
                    if errno == rustix::io::Errno::PERM {
                        rustix::fs::openat(
                            dir,
                            name,
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                    } else {
                        Err(errno)
                    }
                })
                .map_err(|errno| filesystem("opening", &path, errno))?;
                let (xattrs, _) = self.xattrs(XattrSource::Fd(file.as_fd()), &path)?;
                let size = stat.st_size as u64;
                self.header(&EntryHeader {
                    path: &path,
                    kind: kind::REGULAR,
                    mode,
                    uid,
                    gid,
                    size,
                    mtime,
                    link_name: b"",
                    device_major: 0,
                    device_minor: 0,
                    xattrs: &xattrs,
                })?;
                let mut file = File::from(file);
                let complete = self
                    .tar
                    .write_data(&mut file, size, &mut self.buffer)
                    .map_err(|error| match error {
                        DataError::Read(error) => filesystem("reading", &path, error),
                        DataError::Write(error) => ArchiveError::Write(error),
                    })?;
                if !complete {
                    return Err(ArchiveError::FileChanged {
                        path: display_path(&path),
                        expected: size,
                    });
                }
                Ok(())
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|errno| filesystem("reading link", &path, errno))?;
                let (xattrs, _) = self.xattrs(XattrSource::Path(proc_path(dir, name)), &path)?;
                self.header(&EntryHeader {
                    path: &path,
                    kind: kind::SYMLINK,
                    mode,
                    uid,
                    gid,
                    size: 0,
                    mtime,
                    link_name: target.as_bytes(),
                    device_major: 0,
                    device_minor: 0,
                    xattrs: &xattrs,
                })
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                let (xattrs, _) = self.xattrs(XattrSource::Path(proc_path(dir, name)), &path)?;
                let entry_kind = match file_type {
                    FileType::CharacterDevice => kind::CHAR,
                    FileType::BlockDevice => kind::BLOCK,
                    _ => kind::FIFO,
                };
                self.header(&EntryHeader {
                    path: &path,
                    kind: entry_kind,
                    mode,
                    uid,
                    gid,
                    size: 0,
                    mtime,
                    link_name: b"",
                    device_major: rustix::fs::major(stat.st_rdev),
                    device_minor: rustix::fs::minor(stat.st_rdev),
                    xattrs: &xattrs,
                })
            }
            _ => {
                self.stats.skipped_sockets += 1;
                Ok(())
            }
        }
    }

    /// Reads the xattrs worth keeping, sorted by name, and whether the directory is opaque.
    /// `trusted.overlay.*` / `user.overlay.*` are overlayfs' own bookkeeping and are never
    /// written; redirect and metacopy xattrs mean the upper cannot be expressed as a tar.
    fn xattrs(
        &mut self,
        source: XattrSource<'_>,
        path: &[u8],
    ) -> Result<(Xattrs, bool), ArchiveError> {
        let list_length = loop {
            let result = match &source {
                XattrSource::Fd(fd) => rustix::fs::flistxattr(fd, &mut self.xattr_names[..]),
                XattrSource::Path(proc) => {
                    rustix::fs::llistxattr(proc.as_slice(), &mut self.xattr_names[..])
                }
            };
            match result {
                Ok(length) => break length,
                Err(rustix::io::Errno::RANGE) => {
                    let new_length = self.xattr_names.len() * 4;
                    self.xattr_names.resize(new_length, 0);
                }
                Err(rustix::io::Errno::NOTSUP) => return Ok((Vec::new(), false)),
                Err(errno) => return Err(filesystem("listing xattrs of", path, errno)),
            }
        };
        if list_length == 0 {
            return Ok((Vec::new(), false));
        }
        let names: Vec<Vec<u8>> = self.xattr_names[..list_length]
            .split(|byte| *byte == 0)
            .filter(|name| !name.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut xattrs = Vec::new();
        let mut opaque = false;
        for xattr_name in names {
            let is_overlay = xattr_name.starts_with(b"trusted.overlay.")
                || xattr_name.starts_with(b"user.overlay.");
            if is_overlay && self.mode == WalkMode::Tree {
                continue;
            }
            let value = loop {
                let result = match &source {
                    XattrSource::Fd(fd) => {
                        rustix::fs::fgetxattr(fd, xattr_name.as_slice(), &mut self.xattr_value[..])
                    }
                    XattrSource::Path(proc) => rustix::fs::lgetxattr(
                        proc.as_slice(),
                        xattr_name.as_slice(),
                        &mut self.xattr_value[..],
                    ),
                };
                match result {
                    Ok(length) => break self.xattr_value[..length].to_vec(),
                    Err(rustix::io::Errno::RANGE) => {
                        let new_length = self.xattr_value.len() * 4;
                        self.xattr_value.resize(new_length, 0);
                    }
                    Err(errno) => return Err(filesystem("reading xattrs of", path, errno)),
                }
            };
            if is_overlay {
                let is_opaque_xattr = xattr_name == OVERLAY_OPAQUE_XATTR.as_bytes()
                    || xattr_name == OVERLAY_USER_OPAQUE_XATTR.as_bytes();
                if is_opaque_xattr {
                    opaque |= value == b"y";
                } else if xattr_name.ends_with(b".overlay.redirect")
                    || xattr_name.ends_with(b".overlay.metacopy")
                {
                    return Err(ArchiveError::UnsupportedOverlayFeature {
                        path: display_path(path),
                        xattr: display_path(&xattr_name),
                    });
                }
                continue;
            }
            xattrs.push((xattr_name, value));
        }
        xattrs.sort();
        Ok((xattrs, opaque))
    }
}
