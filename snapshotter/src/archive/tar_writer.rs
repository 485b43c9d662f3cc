//! A tar writer that builds ustar headers itself, with PAX extended headers for what ustar
//! cannot hold: long names and link targets, large sizes and ids, and xattrs
//! (`SCHILY.xattr.<name>`, the form Docker, containerd and GNU tar read).

use std::io::{self, Read, Write};

pub(crate) const BLOCK: usize = 512;

/// Tar type flags written by kiln.
pub(crate) mod kind {
    pub(crate) const REGULAR: u8 = b'0';
    pub(crate) const HARDLINK: u8 = b'1';
    pub(crate) const SYMLINK: u8 = b'2';
    pub(crate) const CHAR: u8 = b'3';
    pub(crate) const BLOCK: u8 = b'4';
    pub(crate) const DIRECTORY: u8 = b'5';
    pub(crate) const FIFO: u8 = b'6';
    pub(crate) const PAX_LOCAL: u8 = b'x';
}

/// A failure while copying entry data: reading the source or writing the sink.
pub(crate) enum DataError {
    Read(io::Error),
    Write(io::Error),
}

/// One entry's header fields.
pub(crate) struct EntryHeader<'a> {
    /// The entry name; a directory's ends with `/`.
    pub(crate) path: &'a [u8],
    pub(crate) kind: u8,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) link_name: &'a [u8],
    pub(crate) device_major: u32,
    pub(crate) device_minor: u32,
    /// Sorted by name.
    pub(crate) xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Writes tar entries to `out`, counting bytes.
pub(crate) struct TarWriter<W: Write> {
    out: W,
    pax: Vec<u8>,
}

/// Largest value an octal field of `width` bytes holds (width - 1 digits and a NUL).
fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}

/// Writes a number into a numeric field: octal when it fits, else GNU base-256 (big-endian,
/// high bit of the first byte set), which Go, GNU tar and libarchive read.
fn put_number(field: &mut [u8], value: u64) {
    let width = field.len();
    if value <= octal_max(width) {
        let text = format!("{:0digits$o}", value, digits = width - 1);
        field[..width - 1].copy_from_slice(text.as_bytes());
        field[width - 1] = 0;
    } else {
        let bytes = value.to_be_bytes();
        field.fill(0);
        field[width - 8..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

/// Appends one PAX record `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut total = body + 1;
    loop {
        let digits = total.to_string().len();
        if body + digits == total {
            break;
        }
        total = body + digits;
    }
    out.extend_from_slice(total.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits a name into ustar `prefix` (<= 155 bytes) and `name` (<= 100 bytes) at a `/`.
fn split_ustar_name(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    if path.len() > 256 {
        return None;
    }
    // A directory's trailing slash stays with the name part.
    let search_end = path.len() - 1;
    let start = path.len().saturating_sub(101);
    (start..search_end)
        .filter(|&slash| path[slash] == b'/')
        .find(|&slash| slash <= 155 && path.len() - slash - 1 <= 100 && slash > 0)
        .map(|slash| (&path[..slash], &path[slash + 1..]))
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        TarWriter {
            out,
            pax: Vec::new(),
        }
    }

    /// Writes an entry's header (preceded by a PAX header when needed). The caller then
    /// writes exactly `size` bytes of data with [`TarWriter::write_data`].
    pub(crate) fn write_header(&mut self, entry: &EntryHeader<'_>) -> io::Result<()> {
        self.pax.clear();
        let ustar_name = split_ustar_name(entry.path);
        if ustar_name.is_none() {
            pax_record(&mut self.pax, b"path", entry.path);
        }
        if entry.link_name.len() > 100 {
            pax_record(&mut self.pax, b"linkpath", entry.link_name);
        }
        if entry.size > octal_max(12) {
            pax_record(&mut self.pax, b"size", entry.size.to_string().as_bytes());
        }
        if entry.uid > octal_max(8) {
            pax_record(&mut self.pax, b"uid", entry.uid.to_string().as_bytes());
        }
        if entry.gid > octal_max(8) {
            pax_record(&mut self.pax, b"gid", entry.gid.to_string().as_bytes());
        }
        if entry.mtime < 0 || entry.mtime as u64 > octal_max(12) {
            pax_record(&mut self.pax, b"mtime", entry.mtime.to_string().as_bytes());
        }
        for (name, value) in entry.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            pax_record(&mut self.pax, &key, value);
        }
        // Records are written in a fixed order (fields, then xattrs sorted by the caller),
        // so the output is deterministic.

        if !self.pax.is_empty() {
            let mut pax_name = b"PaxHeaders.0/".to_vec();
            let base = entry
                .path
                .split(|byte| *byte == b'/')
                .rfind(|part| !part.is_empty())
                .unwrap_or(b"root");
            pax_name.extend_from_slice(&base[..base.len().min(100 - pax_name.len())]);
            let header = build_header(
                &pax_name,
                &[],
                kind::PAX_LOCAL,
                0o644,
                0,
                0,
                self.pax.len() as u64,
                entry.mtime.max(0) as u64,
                b"",
                0,
                0,
            );
            self.out.write_all(&header)?;
            let records = std::mem::take(&mut self.pax);
            self.out.write_all(&records)?;
            self.write_padding(records.len() as u64)?;
            self.pax = records;
        }

        let (prefix, name) = match ustar_name {
            Some(split) => split,
            None => (&[][..], &entry.path[..entry.path.len().min(100)]),
        };
        let link_name = &entry.link_name[..entry.link_name.len().min(100)];
        let mtime = entry.mtime.clamp(0, octal_max(12) as i64) as u64;
        let header = build_header(
            name,
            prefix,
            entry.kind,
            entry.mode,
            entry.uid,
            entry.gid,
            entry.size,
            mtime,
            link_name,
            entry.device_major,
            entry.device_minor,
        );
        self.out.write_all(&header)
    }

    /// Copies exactly `size` bytes from `data` and pads to the block size. Returns `Ok(false)`
    /// if `data` ended early (the caller reports the file as changed).
    pub(crate) fn write_data(
        &mut self,
        data: &mut impl Read,
        size: u64,
        buffer: &mut [u8],
    ) -> Result<bool, DataError> {
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(buffer.len() as u64) as usize;
            let read = match data.read(&mut buffer[..want]) {
                Ok(0) => return Ok(false),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(DataError::Read(error)),
            };
            self.out
                .write_all(&buffer[..read])
                .map_err(DataError::Write)?;
            remaining -= read as u64;
        }
        self.write_padding(size).map_err(DataError::Write)?;
        Ok(true)
    }

    fn write_padding(&mut self, size: u64) -> io::Result<()> {
        let rest = (size % BLOCK as u64) as usize;
        if rest != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rest])?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[allow(clippy::too_many_arguments)]
fn build_header(
    name: &[u8],
    prefix: &[u8],
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link_name: &[u8],
    device_major: u32,
    device_minor: u32,
) -> [u8; BLOCK] {
    let mut header = [0u8; BLOCK];
    header[..name.len()].copy_from_slice(name);
    put_number(&mut header[100..108], u64::from(mode & 0o7777));
    put_number(&mut header[108..116], uid);
    put_number(&mut header[116..124], gid);
    put_number(&mut header[124..136], size);
    put_number(&mut header[136..148], mtime);
    header[156] = kind;
    header[157..157 + link_name.len()].copy_from_slice(link_name);
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // uname and gname stay empty: ids are what count, and names would leak the build host's.
    if kind == kind::CHAR || kind == kind::BLOCK {
        put_number(&mut header[329..337], u64::from(device_major));
        put_number(&mut header[337..345], u64::from(device_minor));
    } else {
        put_number(&mut header[329..337], 0);
        put_number(&mut header[337..345], 0);
    }
    header[345..345 + prefix.len()].copy_from_slice(prefix);
    // The checksum is computed with its own field taken as eight spaces.
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|byte| u32::from(*byte)).sum();
    let text = format!("{sum:06o}");
    header[148..154].copy_from_slice(text.as_bytes());
    header[154] = 0;
    header[155] = b' ';
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"x");
        assert_eq!(out, b"9 path=x\n");
        let mut out = Vec::new();
        let value = vec![b'a'; 95];
        pax_record(&mut out, b"path", &value);
        // 95 + 4 + 3 = 102 plus 3 digits = 105.
        assert!(out.starts_with(b"105 path="));
        assert_eq!(out.len(), 105);
    }

    #[test]
    fn splits_long_names_at_a_slash() {
        let long = format!("{}/{}", "a".repeat(120), "b".repeat(90));
        let (prefix, name) = split_ustar_name(long.as_bytes()).unwrap();
        assert_eq!(prefix.len(), 120);
        assert_eq!(name.len(), 90);
        assert!(split_ustar_name("c".repeat(101).as_bytes()).is_none());
    }

    #[test]
    fn numbers_fall_back_to_base_256() {
        let mut field = [0u8; 12];
        put_number(&mut field, 0o777);
        assert_eq!(&field, b"00000000777\0");
        put_number(&mut field, 1 << 40);
        assert_eq!(field[0], 0x80);
        assert_eq!(&field[4..], &(1u64 << 40).to_be_bytes());
    }
}
