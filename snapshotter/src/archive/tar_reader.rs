//! A streaming tar reader that follows Go's `archive/tar` (what Docker and containerd use), so
//! kiln reads a layer exactly as they do.
//!
//! Why not the `tar` crate: it splits PAX records at newlines, so a binary xattr value that
//! holds a `\n` byte (a `security.capability` can) makes it fail, and it takes data for
//! header-only entries (links, directories, devices) from their size field where Go reads
//! none; both are parser differentials a layer could exploit. Here PAX records are read by
//! their length prefix, a PAX `size` always wins over the header's, header-only entries have
//! no data, and a PAX header describes the next file entry, not a GNU long-name header.

use std::io::{self, Read};

use rustix::fs::Timespec;

/// Extension headers (PAX, GNU long names) larger than this are refused, as Go does.
const MAX_EXTENSION_SIZE: u64 = 1 << 20;
const BLOCK: usize = 512;

/// One file entry with every extension applied.
#[derive(Debug, Clone)]
pub(crate) struct TarEntry {
    /// The name as stored (not cleaned).
    pub(crate) path: Vec<u8>,
    /// The type flag; `\0` and `7` are reported as `0`.
    pub(crate) kind: u8,
    pub(crate) link_name: Vec<u8>,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    /// Bytes of data that follow the header (0 for header-only types).
    pub(crate) size: u64,
    pub(crate) mtime: Timespec,
    pub(crate) atime: Option<Timespec>,
    pub(crate) device_major: u32,
    pub(crate) device_minor: u32,
    /// `SCHILY.xattr.*` records, in the order given.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn malformed(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads tar entries from a stream. After [`TarReader::next_entry`] returns an entry, its data
/// is read with [`TarReader::read_data`]; whatever is left is skipped before the next header.
pub(crate) struct TarReader<R: Read> {
    inner: R,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
}

/// Reads exactly `buffer.len()` bytes; `Ok(false)` if the stream ended before the first byte.
fn read_block(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// The bytes of a string field up to its first NUL.
fn field_string(field: &[u8]) -> &[u8] {
    match field.iter().position(|byte| *byte == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

/// Parses a numeric field: octal (spaces and NULs around it ignored) or base-256 (first byte
/// 0x80 for positive, 0xff for negative), as Go's `parseNumeric`.
fn parse_number(field: &[u8]) -> io::Result<i64> {
    if let Some(first) = field.first().filter(|byte| **byte & 0x80 != 0) {
        let negative = *first & 0x40 != 0;
        let fill: u8 = if negative { 0xff } else { 0x00 };
        let mut value: u64 = 0;
        for (index, byte) in field.iter().enumerate() {
            let byte = byte ^ fill;
            let byte = if index == 0 { byte & 0x7f } else { byte };
            if value >> 56 != 0 {
                return Err(malformed("numeric field overflows"));
            }
            value = (value << 8) | u64::from(byte);
        }
        if value >> 63 != 0 {
            return Err(malformed("numeric field overflows"));
        }
        let value = value as i64;
        return Ok(if negative { !value } else { value });
    }
    let text = field_string(field);
    let trimmed: Vec<u8> = text
        .iter()
        .copied()
        .skip_while(|byte| *byte == b' ')
        .take_while(|byte| *byte != b' ' && *byte != 0)
        .collect();
    if trimmed.is_empty() {
        return Ok(0);
    }
    let mut value: i64 = 0;
    for byte in trimmed {
        if !(b'0'..=b'7').contains(&byte) {
            return Err(malformed("invalid octal number in header"));
        }
        value = value
            .checked_mul(8)
            .and_then(|value| value.checked_add(i64::from(byte - b'0')))
            .ok_or_else(|| malformed("numeric field overflows"))?;
    }
    Ok(value)
}

fn parse_unsigned(field: &[u8], what: &str) -> io::Result<u64> {
    let value = parse_number(field)?;
    u64::try_from(value).map_err(|_| malformed(format!("negative {what} in header")))
}

/// Parses a PAX time (`"1700000000"`, `"1700000000.5"`, `"-1.25"`).
pub(crate) fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|byte| byte.is_ascii_digit())
        || !fraction.bytes().all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    let mut nanos: i64 = 0;
    for (index, digit) in fraction.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10i64.pow(8 - index as u32);
    }
    Some(match (negative, nanos) {
        (false, _) => Timespec {
            tv_sec: seconds,
            tv_nsec: nanos,
        },
        (true, 0) => Timespec {
            tv_sec: -seconds,
            tv_nsec: 0,
        },
        (true, _) => Timespec {
            tv_sec: -seconds - 1,
            tv_nsec: 1_000_000_000 - nanos,
        },
    })
}

/// Splits PAX extended header data into (key, value) records, each read by its length.
pub(crate) fn parse_pax_records(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut records = Vec::new();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|byte| *byte == b' ')
            .ok_or_else(|| malformed("PAX record without a length"))?;
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| malformed("invalid PAX record length"))?;
        if length <= space + 1 || length > data.len() || data[length - 1] != b'\n' {
            return Err(malformed("PAX record length does not match"));
        }
        let record = &data[space + 1..length - 1];
        let equals = record
            .iter()
            .position(|byte| *byte == b'=')
            .ok_or_else(|| malformed("PAX record without ="))?;
        let key = &record[..equals];
        if key.is_empty() {
            return Err(malformed("PAX record with an empty key"));
        }
        records.push((key.to_vec(), record[equals + 1..].to_vec()));
        data = &data[length..];
    }
    Ok(records)
}

/// Extensions gathered from headers that precede a file entry.
#[derive(Default)]
struct Pending {
    pax: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
        }
    }

    /// The underlying reader (positioned after whatever was read).
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the current entry's data; `Ok(0)` at its end. A stream that ends inside the
    /// data is an error.
    pub(crate) fn read_data(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buffer.is_empty() {
            return Ok(0);
        }
        let want = self.remaining.min(buffer.len() as u64) as usize;
        loop {
            match self.inner.read(&mut buffer[..want]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => {
                    self.remaining -= read as u64;
                    return Ok(read);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Skips the rest of the current entry and its padding.
    fn skip_rest(&mut self) -> io::Result<()> {
        let to_skip = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        let copied = io::copy(&mut (&mut self.inner).take(to_skip), &mut io::sink())?;
        if copied != to_skip {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Reads an extension header's data (bounded) and its padding.
    fn read_extension(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > MAX_EXTENSION_SIZE {
            return Err(malformed("extension header too large"));
        }
        let mut data = vec![0u8; size as usize];
        if !data.is_empty() && !read_block(&mut self.inner, &mut data)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.remaining = 0;
        self.padding = padding(size);
        self.skip_rest()?;
        Ok(data)
    }

    /// The next file entry, or `None` at the end of the archive.
    pub(crate) fn next_entry(&mut self) -> io::Result<Option<TarEntry>> {
        self.skip_rest()?;
        let mut pending = Pending::default();
        let mut header = [0u8; BLOCK];
        loop {
            if !read_block(&mut self.inner, &mut header)? {
                if pending.pax.is_some()
                    || pending.long_name.is_some()
                    || pending.long_link.is_some()
                {
                    return Err(malformed("archive ends after an extension header"));
                }
                return Ok(None);
            }
            if header.iter().all(|byte| *byte == 0) {
                // One zero block may be followed by the end of the stream or a second one.
                if !read_block(&mut self.inner, &mut header)? || header.iter().all(|b| *b == 0) {
                    return Ok(None);
                }
                return Err(malformed("a zero block followed by a header"));
            }
            verify_checksum(&header)?;
            let kind = header[156];
            let header_size = parse_unsigned(&header[124..136], "size")?;
            match kind {
                b'x' | b'X' => {
                    if pending.pax.is_some() {
                        return Err(malformed("two PAX headers describe one entry"));
                    }
                    let data = self.read_extension(header_size)?;
                    pending.pax = Some(parse_pax_records(&data)?);
                }
                b'g' => {
                    // Global PAX headers: read and ignored, as Docker does.
                    self.read_extension(header_size)?;
                }
                b'L' | b'K' => {
                    let data = self.read_extension(header_size)?;
                    let value = field_string(&data).to_vec();
                    let slot = if kind == b'L' {
                        &mut pending.long_name
                    } else {
                        &mut pending.long_link
                    };
                    if slot.is_some() {
                        return Err(malformed("two GNU long names describe one entry"));
                    }
                    *slot = Some(value);
                }
                _ => return self.file_entry(&header, header_size, pending).map(Some),
            }
        }
    }

    fn file_entry(
        &mut self,
        header: &[u8; BLOCK],
        header_size: u64,
        pending: Pending,
    ) -> io::Result<TarEntry> {
        let is_ustar = &header[257..263] == b"ustar\0";
        let is_gnu = &header[257..265] == b"ustar  \0";
        let mut path = field_string(&header[..100]).to_vec();
        if is_ustar {
            let prefix = field_string(&header[345..500]);
            if !prefix.is_empty() {
                let mut joined = prefix.to_vec();
                joined.push(b'/');
                joined.extend_from_slice(&path);
                path = joined;
            }
        }
        let mut kind = header[156];
        let is_old_regular = kind == 0;
        if kind == 0 || kind == b'7' {
            kind = b'0';
        }
        let mut entry = TarEntry {
            path,
            kind,
            link_name: field_string(&header[157..257]).to_vec(),
            mode: (parse_unsigned(&header[100..108], "mode")? & 0o7777) as u32,
            uid: parse_unsigned(&header[108..116], "uid")?,
            gid: parse_unsigned(&header[116..124], "gid")?,
            size: header_size,
            mtime: Timespec {
                tv_sec: parse_number(&header[136..148])?,
                tv_nsec: 0,
            },
            atime: None,
            device_major: 0,
            device_minor: 0,
            xattrs: Vec::new(),
        };
        if is_ustar || is_gnu {
            if matches!(kind, b'3' | b'4') {
                entry.device_major = u32::try_from(parse_unsigned(&header[329..337], "major")?)
                    .map_err(|_| malformed("device major out of range"))?;
                entry.device_minor = u32::try_from(parse_unsigned(&header[337..345], "minor")?)
                    .map_err(|_| malformed("device minor out of range"))?;
            }
            if is_gnu {
                let atime = parse_number(&header[345..357])?;
                if atime != 0 {
                    entry.atime = Some(Timespec {
                        tv_sec: atime,
                        tv_nsec: 0,
                    });
                }
            }
        }
        if let Some(records) = pending.pax {
            for (key, value) in records {
                match key.as_slice() {
                    b"path" => entry.path = value,
                    b"linkpath" => entry.link_name = value,
                    b"size" => entry.size = parse_decimal(&value, "size")?,
                    b"uid" => entry.uid = parse_decimal(&value, "uid")?,
                    b"gid" => entry.gid = parse_decimal(&value, "gid")?,
                    b"mtime" => {
                        entry.mtime =
                            parse_pax_time(&value).ok_or_else(|| malformed("invalid PAX mtime"))?
                    }
                    b"atime" => entry.atime = parse_pax_time(&value),
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            entry.xattrs.push((name.to_vec(), value));
                        } else if key.starts_with(b"GNU.sparse.") {
                            return Err(malformed("GNU sparse files are not supported"));
                        }
                    }
                }
            }
        }
        // GNU long names win over PAX ones, as in Go's reader.
        if let Some(long_name) = pending.long_name {
            entry.path = long_name;
        }
        if let Some(long_link) = pending.long_link {
            entry.link_name = long_link;
        }
        // A V7 tar marks a directory as an old-style regular file whose name ends in '/'.
        if is_old_regular && entry.path.last() == Some(&b'/') {
            entry.kind = b'5';
        }
        let kind = entry.kind;
        // Links, directories, devices and fifos carry no data whatever their size says.
        if matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            entry.size = 0;
        }
        if kind == b'S' {
            return Err(malformed("GNU sparse files are not supported"));
        }
        self.remaining = entry.size;
        self.padding = padding(entry.size);
        Ok(entry)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn parse_decimal(value: &[u8], what: &str) -> io::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| malformed(format!("invalid PAX {what}")))
}

/// Accepts the unsigned or the signed sum, as Go does (old tars used signed chars).
fn verify_checksum(header: &[u8; BLOCK]) -> io::Result<()> {
    let stored = parse_number(&header[148..156])?;
    let mut unsigned: i64 = 0;
    let mut signed: i64 = 0;
    for (index, byte) in header.iter().enumerate() {
        let byte = if (148..156).contains(&index) {
            b' '
        } else {
            *byte
        };
        unsigned += i64::from(byte);
        signed += i64::from(byte as i8);
    }
    if stored != unsigned && stored != signed {
        return Err(malformed("tar header checksum mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_are_read_by_length() {
        let value = b"a\nb=c\0d";
        let mut data = b"31 SCHILY.xattr.user.x=a\nb=c\0d\n".to_vec();
        data.extend_from_slice(b"12 size=100\n");
        let records = parse_pax_records(&data).unwrap();
        assert_eq!(
            records[0],
            (b"SCHILY.xattr.user.x".to_vec(), value.to_vec())
        );
        assert_eq!(records[1], (b"size".to_vec(), b"100".to_vec()));
        assert!(parse_pax_records(b"99 path=x\n").is_err());
        assert!(parse_pax_records(b"9 path=xy").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0").unwrap(), 0o644);
        assert_eq!(parse_number(b"   644 \0").unwrap(), 0o644);
        assert_eq!(parse_number(b"\0\0\0\0").unwrap(), 0);
        let mut base256 = [0u8; 12];
        base256[0] = 0x80;
        base256[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(parse_number(&base256).unwrap(), 1 << 40);
        assert_eq!(parse_number(&[0xff; 12]).unwrap(), -1);
        assert!(parse_number(b"0009\0").is_err());
    }

    #[test]
    fn pax_times() {
        let time = parse_pax_time(b"1700000000.25").unwrap();
        assert_eq!((time.tv_sec, time.tv_nsec), (1_700_000_000, 250_000_000));
        let time = parse_pax_time(b"-1.25").unwrap();
        assert_eq!((time.tv_sec, time.tv_nsec), (-2, 750_000_000));
        assert!(parse_pax_time(b"12a").is_none());
    }
}
