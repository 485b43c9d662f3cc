//! The `lstat` of a selected file, kept compact: a walk of a large build context holds one per
//! file (20,000 in the big-context benchmark), and `std::fs::Metadata` is twice the size with
//! fields no copy or checksum reads.

use std::os::unix::fs::MetadataExt;

/// What `lstat` said about one file: the fields a copy and a content checksum use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `st_mode`: file type and permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    atime_nsec: u32,
    mtime_nsec: u32,
    ctime_nsec: u32,
    size: u64,
    nlink: u64,
    ino: u64,
    dev: u64,
    rdev: u64,
    atime: i64,
    mtime: i64,
    ctime: i64,
}

impl Stat {
    /// From the standard library's metadata (an `lstat` by path).
    pub fn from_metadata(metadata: &std::fs::Metadata) -> Stat {
        Stat {
            mode: metadata.mode(),
            uid: metadata.uid(),
            gid: metadata.gid(),
            atime_nsec: metadata.atime_nsec() as u32,
            mtime_nsec: metadata.mtime_nsec() as u32,
            ctime_nsec: metadata.ctime_nsec() as u32,
            size: metadata.size(),
            nlink: metadata.nlink(),
            ino: metadata.ino(),
            dev: metadata.dev(),
            rdev: metadata.rdev(),
            atime: metadata.atime(),
            mtime: metadata.mtime(),
            ctime: metadata.ctime(),
        }
    }

    /// From rustix's `stat` (an `lstat` relative to a directory descriptor). Its field types
    /// differ between architectures: some casts are no-ops on this one.
    #[allow(clippy::unnecessary_cast)]
    pub fn from_rustix(stat: &rustix::fs::Stat) -> Stat {
        Stat {
            mode: stat.st_mode as u32,
            uid: stat.st_uid as u32,
            gid: stat.st_gid as u32,
            atime_nsec: stat.st_atime_nsec as u32,
            mtime_nsec: stat.st_mtime_nsec as u32,
            ctime_nsec: stat.st_ctime_nsec as u32,
            size: stat.st_size as u64,
            nlink: stat.st_nlink as u64,
            ino: stat.st_ino as u64,
            dev: stat.st_dev as u64,
            rdev: stat.st_rdev as u64,
            atime: stat.st_atime as i64,
            mtime: stat.st_mtime as i64,
            ctime: stat.st_ctime as i64,
        }
    }

    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }

    pub fn is_char_device(&self) -> bool {
        self.kind() == libc::S_IFCHR
    }

    pub fn is_block_device(&self) -> bool {
        self.kind() == libc::S_IFBLK
    }

    pub fn is_fifo(&self) -> bool {
        self.kind() == libc::S_IFIFO
    }

    /// `st_mode` (type and permission bits).
    pub fn mode(&self) -> u32 {
        self.mode
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn nlink(&self) -> u64 {
        self.nlink
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    pub fn dev(&self) -> u64 {
        self.dev
    }

    pub fn rdev(&self) -> u64 {
        self.rdev
    }

    pub fn atime(&self) -> i64 {
        self.atime
    }

    pub fn atime_nsec(&self) -> i64 {
        i64::from(self.atime_nsec)
    }

    pub fn mtime(&self) -> i64 {
        self.mtime
    }

    pub fn mtime_nsec(&self) -> i64 {
        i64::from(self.mtime_nsec)
    }

    pub fn ctime(&self) -> i64 {
        self.ctime
    }

    pub fn ctime_nsec(&self) -> i64 {
        i64::from(self.ctime_nsec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sources_agree() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").expect("write");
        std::os::unix::fs::symlink("f", dir.path().join("l")).expect("symlink");
        for name in ["f", "l", ""] {
            let path = dir.path().join(name);
            let by_std = Stat::from_metadata(&std::fs::symlink_metadata(&path).expect("lstat"));
            let by_rustix = Stat::from_rustix(
                &rustix::fs::statat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .expect("statat"),
            );
            assert_eq!(by_std, by_rustix, "{name}");
        }
        let file_stat = Stat::from_metadata(&std::fs::symlink_metadata(&file).expect("lstat"));
        assert!(file_stat.is_file() && !file_stat.is_dir() && !file_stat.is_symlink());
        assert_eq!(file_stat.len(), 5);
        let link = Stat::from_metadata(&std::fs::symlink_metadata(dir.path().join("l")).unwrap());
        assert!(link.is_symlink());
        let directory = Stat::from_metadata(&std::fs::symlink_metadata(dir.path()).unwrap());
        assert!(directory.is_dir());
    }
}
