//! ADD of local archives: each compression is detected and extracted, a non-archive is copied,
//! and hostile archives (HOSTILE-INPUTS B1-B3, B5) cannot write outside the destination.

mod fileops_support;

use std::io::Write;
use std::path::Path;

use fileops_support::{copy_action, dump};
use kiln_frontend::dag::op::{Chown, FileAction, UserOrId};
use kiln_worker::fileops::{apply_action, detect_archive, ArchiveKind, FileOpOptions, SourceRoot};

/// One tar entry: (raw name, type, content or link target).
enum Item<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// Writes a tar with raw names (no validation, so hostile names can be made).
fn tar_bytes(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_old();
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match item {
            Item::Dir(name) => (name, tar::EntryType::Directory, b"", None),
            Item::File(name, content) => (name, tar::EntryType::Regular, content.as_bytes(), None),
            Item::Symlink(name, target) => (name, tar::EntryType::Symlink, b"", Some(target)),
            Item::Hardlink(name, target) => (name, tar::EntryType::Link, b"", Some(target)),
        };
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o640
        });
        header.set_uid(1234);
        header.set_gid(5678);
        header.set_mtime(1_600_000_000);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn compress(kind: ArchiveKind, bytes: &[u8]) -> Vec<u8> {
    match kind {
        ArchiveKind::Tar => bytes.to_vec(),
        ArchiveKind::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        }
        ArchiveKind::Bzip2 => {
            let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        }
        ArchiveKind::Xz => {
            let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        }
        ArchiveKind::Zstd => zstd::encode_all(bytes, 1).unwrap(),
    }
}

/// ADDs `archive` (written into a fresh context as `name`) to `dest` in a fresh destination
/// (built from `dest_spec`); returns the destination listing or the error text.
fn add(
    name: &str,
    archive: &[u8],
    dest: &str,
    edit: impl FnOnce(&mut kiln_frontend::dag::op::CopyAction),
) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context");
    let root = dir.path().join("dest");
    let victim = dir.path().join("victim");
    for path in [&context, &root, &victim] {
        std::fs::create_dir(path).unwrap();
    }
    std::fs::write(victim.join("hello"), "sentinel").unwrap();
    std::fs::write(context.join(name), archive).unwrap();
    let mut action = copy_action(name, dest);
    action.attempt_unpack = true;
    edit(&mut action);
    let source = SourceRoot::build_context(&context, &[], &[]).unwrap();
    let result = apply_action(
        &FileAction::Copy(action),
        &root,
        &[source],
        &FileOpOptions::default(),
    );
    assert_eq!(
        std::fs::read_to_string(victim.join("hello")).unwrap(),
        "sentinel"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    let text = match result {
        Ok(()) => dump(&root),
        Err(error) => format!("error: {error}"),
    };
    (text, dir)
}

fn sample() -> Vec<u8> {
    tar_bytes(&[
        Item::Dir("top/"),
        Item::File("top/a.txt", "A"),
        Item::Symlink("top/link", "a.txt"),
        Item::Hardlink("top/hard", "top/a.txt"),
        Item::File("top/.wh.kept", "W"),
    ])
}

const SAMPLE_LISTING: &str = "/out d755 0:0
/out/top d755 1234:5678
/out/top/.wh.kept f640 1234:5678 W
/out/top/a.txt f640 1234:5678 A
/out/top/hard f640 1234:5678 A
/out/top/link l 1234:5678 -> a.txt";

#[test]
fn every_compression_is_unpacked() {
    for (kind, name) in [
        (ArchiveKind::Tar, "x.tar"),
        (ArchiveKind::Gzip, "x.tgz"),
        (ArchiveKind::Bzip2, "x.tar.bz2"),
        (ArchiveKind::Xz, "x.tar.xz"),
        (ArchiveKind::Zstd, "whatever.bin"),
    ] {
        let bytes = compress(kind, &sample());
        let probe = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(probe.path(), &bytes).unwrap();
        assert_eq!(detect_archive(probe.path()).unwrap(), Some(kind), "{name}");
        let (listing, _dir) = add(name, &bytes, "/out", |_| {});
        assert_eq!(listing, SAMPLE_LISTING, "{name}");
    }
}

#[test]
fn chown_applies_to_unpacked_files() {
    let (listing, _dir) = add("x.tar", &sample(), "/out/", |action| {
        action.owner = Some(Chown {
            user: Some(UserOrId::Id(9)),
            group: None,
        })
    });
    assert_eq!(
        listing,
        SAMPLE_LISTING
            .replace("1234:5678", "9:9")
            .replace("/out d755 0:0", "/out d755 9:9")
    );
}

#[test]
fn non_archives_are_copied() {
    let not_tar = compress(ArchiveKind::Gzip, b"just some text");
    let (listing, _dir) = add("notes.gz", &not_tar, "/out/", |_| {});
    assert!(
        listing.starts_with("/out d755 0:0\n/out/notes.gz f644 0:0"),
        "{listing}"
    );
    let (listing, _dir) = add("plain.txt", b"hello", "/out/", |_| {});
    assert_eq!(listing, "/out d755 0:0\n/out/plain.txt f644 0:0 hello");
    // Without attempt_unpack (COPY) an archive is copied as is.
    let (listing, _dir) = add("x.tar", &sample(), "/out/", |action| {
        action.attempt_unpack = false
    });
    assert!(
        listing.starts_with("/out d755 0:0\n/out/x.tar f644 0:0"),
        "{listing}"
    );
}

#[test]
fn hostile_archives_stay_inside() {
    for items in [
        vec![Item::File("../victim/x", "evil")],
        vec![Item::File("/../victim/x", "evil")],
        vec![Item::File("a/../../victim/x", "evil")],
        vec![Item::Hardlink("h", "../victim/hello")],
        vec![Item::Symlink("up", "../../victim")],
    ] {
        let (listing, _dir) = add("evil.tar", &tar_bytes(&items), "/out", |_| {});
        assert!(listing.starts_with("error: unpacking archive"), "{listing}");
    }
    // Links to absolute paths re-root inside the destination directory.
    let items = [
        Item::Symlink("localetc", "/etc"),
        Item::File("localetc/x", "inside"),
        Item::Symlink("root", "/"),
        Item::File("root/tmp/y", "inside too"),
        Item::Symlink("dots", "/dummy/../etc"),
        Item::File("dots/z", "z"),
        Item::Hardlink("abs", "/etc/x"),
        // A link, then a file of the same name: the file replaces the link (B5).
        Item::Symlink("swap", "/etc/passwd"),
        Item::File("swap", "plain"),
    ];
    let (listing, dir) = add("links.tar", &tar_bytes(&items), "/out", |_| {});
    assert!(!listing.starts_with("error"), "{listing}");
    let out = dir.path().join("dest/out");
    assert_eq!(
        std::fs::read_to_string(out.join("etc/x")).unwrap(),
        "inside"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tmp/y")).unwrap(),
        "inside too"
    );
    assert_eq!(std::fs::read_to_string(out.join("etc/z")).unwrap(), "z");
    assert_eq!(std::fs::read_to_string(out.join("abs")).unwrap(), "inside");
    assert!(std::fs::symlink_metadata(out.join("swap"))
        .unwrap()
        .is_file());
    assert!(
        !Path::new("/etc/x").exists()
            || std::fs::read_to_string("/etc/x").unwrap_or_default() != "inside"
    );
}
