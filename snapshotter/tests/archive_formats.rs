//! Layer tar formats: interoperability with GNU tar both ways, compression in one pass,
//! reproducible output with SOURCE_DATE_EPOCH, long names and large ids through PAX.

mod archive_support;

use std::io::{Read, Write};
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use archive_support::{describe_tree, hardlink_groups, set_mtime, tree_differences, Raw, RawTar};
use kiln_snapshotter::archive::{
    apply_layer, decompressing_reader, detect_compression, write_compressed_layer, write_tree,
    ApplyOptions, Compression, CompressionOptions, DiffOptions, LayerSource, WhiteoutMode,
};
use kiln_types::Digest;
use rustix::fs::{FileType, Mode, XattrFlags};

fn all_but_overlay(name: &[u8]) -> bool {
    !name.starts_with(b"trusted.overlay.")
}

fn user_xattrs(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

/// A tree with every kind of object, long names and awkward values.
fn build_tree(root: &Path) {
    let write = |path: &str, content: &[u8]| std::fs::write(root.join(path), content).unwrap();
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    write("dir/file", b"content");
    write("dir/sub/empty", b"");
    write("exec", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(root.join("exec"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::hard_link(root.join("dir/file"), root.join("dir/sub/link")).unwrap();
    symlink("../file", root.join("dir/sub/rel")).unwrap();
    symlink(format!("/{}", "x".repeat(180)), root.join("longtarget")).unwrap();
    let long_dir = root.join("a".repeat(90)).join("b".repeat(90));
    std::fs::create_dir_all(&long_dir).unwrap();
    std::fs::write(long_dir.join("c".repeat(150)), b"deep").unwrap();
    write("bigid", b"owner beyond ustar's octal range");
    lchown(root.join("bigid"), Some(3_000_000), Some(4_000_000)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("zero"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 5),
    )
    .unwrap();
    std::fs::set_permissions(root.join("zero"), std::fs::Permissions::from_mode(0o666)).unwrap();
    // A capability whose bytes hold a newline (CAP_DAC_OVERRIDE | CAP_FOWNER = 0x0a): PAX
    // records must be read by length, not split at newlines.
    let capability: [u8; 20] = [
        1, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    rustix::fs::lsetxattr(
        root.join("exec").as_path(),
        "security.capability",
        &capability,
        XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        root.join("dir").as_path(),
        "user.note",
        b"line one\nline two=\0",
        XattrFlags::empty(),
    )
    .unwrap();
    for (index, path) in ["dir/file", "exec", "dir/sub", "dir", "bigid", "longtarget"]
        .iter()
        .enumerate()
    {
        set_mtime(&root.join(path), 1_650_000_000 + index as i64 * 100);
    }
}

fn assert_same(expected: &Path, found: &Path, keep: &dyn Fn(&[u8]) -> bool, what: &str) {
    let differences = tree_differences(&describe_tree(expected, keep), &describe_tree(found, keep));
    assert!(
        differences.is_empty(),
        "{what}:\n{}",
        differences.join("\n")
    );
    assert_eq!(
        hardlink_groups(expected),
        hardlink_groups(found),
        "{what}: hardlinks"
    );
}

#[test]
fn write_tree_then_apply_reproduces_the_tree() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    let applied = temp.path().join("applied");
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&applied).unwrap();
    build_tree(&source);
    let mut tar = Vec::new();
    let stats = write_tree(&source, &mut tar, &DiffOptions::default()).unwrap();
    assert_eq!(stats.diff_id, Digest::of_bytes(&tar));
    apply_layer(
        &tar[..],
        Compression::Uncompressed,
        &applied,
        &ApplyOptions::new(WhiteoutMode::Keep),
    )
    .unwrap();
    assert_same(&source, &applied, &all_but_overlay, "write_tree round trip");
}

#[test]
fn gnu_tar_reads_what_kiln_writes() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    let extracted = temp.path().join("extracted");
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&extracted).unwrap();
    build_tree(&source);
    let mut tar = Vec::new();
    write_tree(&source, &mut tar, &DiffOptions::default()).unwrap();
    let mut child = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(&extracted)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    assert!(child.wait().unwrap().success());
    // GNU tar sets directory times and extracts everything kiln wrote.
    assert_same(&source, &extracted, &user_xattrs, "extracted by GNU tar");
}

#[test]
fn kiln_reads_what_gnu_tar_writes() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    let applied = temp.path().join("applied");
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&applied).unwrap();
    build_tree(&source);
    for format in ["pax", "gnu"] {
        let output = Command::new("tar")
            .args([
                &format!("--format={format}"),
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-cpf",
                "-",
                "-C",
            ])
            .arg(&source)
            .arg(".")
            .output()
            .unwrap();
        assert!(output.status.success());
        let _ = std::fs::remove_dir_all(&applied);
        std::fs::create_dir(&applied).unwrap();
        apply_layer(
            &output.stdout[..],
            Compression::Uncompressed,
            &applied,
            &ApplyOptions::new(WhiteoutMode::Keep),
        )
        .unwrap();
        // The GNU format has no xattrs; PAX has them all.
        let keep: &dyn Fn(&[u8]) -> bool = if format == "pax" {
            &user_xattrs
        } else {
            &|_: &[u8]| false
        };
        assert_same(
            &source,
            &applied,
            keep,
            &format!("GNU tar --format={format}"),
        );
    }
}

#[test]
fn compressed_layers_are_written_and_read_in_one_pass() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    std::fs::create_dir(&source).unwrap();
    build_tree(&source);
    let mut plain = Vec::new();
    let plain_stats = write_tree(&source, &mut plain, &DiffOptions::default()).unwrap();
    for options in [
        CompressionOptions::gzip(),
        CompressionOptions::zstd(),
        CompressionOptions::uncompressed(),
        CompressionOptions {
            compression: Compression::Gzip,
            level: Some(1),
        },
        CompressionOptions {
            compression: Compression::Zstd,
            level: Some(19),
        },
    ] {
        let (layer, stats, blob) = write_compressed_layer(
            LayerSource::Tree(&source),
            Vec::new(),
            options,
            &DiffOptions::default(),
        )
        .unwrap();
        assert_eq!(layer.diff_id, plain_stats.diff_id, "{options:?}");
        assert_eq!(stats.diff_id, plain_stats.diff_id);
        assert_eq!(layer.uncompressed_size, plain.len() as u64);
        assert_eq!(layer.digest, Digest::of_bytes(&blob));
        assert_eq!(layer.size, blob.len() as u64);
        assert_eq!(detect_compression(&blob), options.compression);
        let mut decompressed = Vec::new();
        decompressing_reader(&blob[..], options.compression)
            .unwrap()
            .read_to_end(&mut decompressed)
            .unwrap();
        assert_eq!(decompressed, plain);

        let applied = temp.path().join(format!(
            "applied-{:?}-{:?}",
            options.compression, options.level
        ));
        std::fs::create_dir(&applied).unwrap();
        let result = apply_layer(
            &blob[..],
            options.compression,
            &applied,
            &ApplyOptions {
                expected_diff_id: Some(layer.diff_id.clone()),
                ..ApplyOptions::new(WhiteoutMode::Keep)
            },
        )
        .unwrap();
        assert_eq!(result.compressed_size, blob.len() as u64);
        assert_eq!(result.uncompressed_size, plain.len() as u64);
        assert_same(&source, &applied, &all_but_overlay, &format!("{options:?}"));
    }
}

#[test]
fn concatenated_gzip_members_are_one_stream() {
    // Go's gzip reader (and so Docker) reads multi-member gzip; so must kiln.
    let tar = RawTar::new()
        .file("a", b"first")
        .file("b", b"second")
        .finish();
    let (first, second) = tar.split_at(700);
    let mut blob = Vec::new();
    for part in [first, second] {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(part).unwrap();
        blob.extend(encoder.finish().unwrap());
    }
    let temp = tempfile::tempdir().unwrap();
    let applied = apply_layer(
        &blob[..],
        Compression::Gzip,
        temp.path(),
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(applied.diff_id, Digest::of_bytes(&tar));
    assert_eq!(std::fs::read(temp.path().join("b")).unwrap(), b"second");
}

#[test]
fn source_date_epoch_clamps_mtimes_and_makes_layers_reproducible() {
    let temp = tempfile::tempdir().unwrap();
    let epoch = 1_600_000_000;
    let mut digests = Vec::new();
    for (index, order) in [["one", "two"], ["two", "one"]].iter().enumerate() {
        let root = temp.path().join(format!("tree{index}"));
        std::fs::create_dir(&root).unwrap();
        // Same content, created in a different order, with new mtimes.
        for name in order {
            std::fs::write(root.join(name), name.as_bytes()).unwrap();
        }
        std::fs::write(root.join("old"), b"older than the epoch").unwrap();
        set_mtime(&root.join("old"), 1_000_000_000);
        let mut tar = Vec::new();
        let stats = write_tree(
            &root,
            &mut tar,
            &DiffOptions {
                source_date_epoch: Some(epoch),
            },
        )
        .unwrap();
        digests.push(stats.diff_id);
        let mut archive = tar::Archive::new(&tar[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let mtime = entry.header().mtime().unwrap();
            if name == "old" {
                assert_eq!(mtime, 1_000_000_000);
            } else {
                assert_eq!(mtime, epoch as u64, "{name}");
            }
            assert_eq!(entry.header().username_bytes(), Some(&b""[..]));
        }
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn pax_fields_apply() {
    // Long name, long link target, large ids, sub-second mtime, all through PAX.
    let temp = tempfile::tempdir().unwrap();
    let long_name = format!("{}/{}", "d".repeat(200), "f".repeat(200));
    let long_target = "t".repeat(300);
    let mut tar = RawTar::new();
    tar.pax(&[
        (b"path", long_name.as_bytes()),
        (b"uid", b"5000000"),
        (b"gid", b"6000000"),
        (b"mtime", b"1234567890.123456789"),
        (b"atime", b"1234567899.5"),
    ]);
    let mut raw = Raw::new(b"truncated-name", b'0');
    raw.size = 4;
    tar.entry(raw, b"data");
    tar.pax(&[(b"linkpath", long_target.as_bytes())]);
    tar.symlink("link", "short");
    let tar = tar.finish();
    apply_layer(
        &tar[..],
        Compression::Uncompressed,
        temp.path(),
        &ApplyOptions::default(),
    )
    .unwrap();
    let file = temp.path().join(&long_name);
    let metadata = std::fs::metadata(&file).unwrap();
    assert_eq!((metadata.uid(), metadata.gid()), (5_000_000, 6_000_000));
    assert_eq!(
        (metadata.mtime(), metadata.mtime_nsec()),
        (1234567890, 123456789)
    );
    assert_eq!(
        (metadata.atime(), metadata.atime_nsec()),
        (1234567899, 500_000_000)
    );
    assert_eq!(
        std::fs::read_link(temp.path().join("link")).unwrap(),
        Path::new(&long_target)
    );
}

#[test]
fn directory_times_are_set_after_their_contents() {
    let temp = tempfile::tempdir().unwrap();
    let mut tar = RawTar::new();
    let mut dir = Raw::new(b"d/", b'5');
    dir.mode = 0o755;
    dir.mtime = 1_000_000_000;
    tar.entry(dir, b"");
    tar.file("d/a", b"a").file("d/b", b"b").dir("d/e/");
    let tar = tar.finish();
    apply_layer(
        &tar[..],
        Compression::Uncompressed,
        temp.path(),
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(temp.path().join("d")).unwrap().mtime(),
        1_000_000_000
    );
}

#[test]
fn detects_compression_from_magic_bytes() {
    assert_eq!(detect_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
    assert_eq!(
        detect_compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
        Compression::Zstd
    );
    assert_eq!(detect_compression(b"ustar"), Compression::Uncompressed);
    assert_eq!(detect_compression(b""), Compression::Uncompressed);
}

#[test]
fn whiteouts_in_keep_mode_are_plain_files() {
    let temp = tempfile::tempdir().unwrap();
    let tar = RawTar::new()
        .file(".wh.something", b"")
        .file("d/.wh..wh..opq", b"")
        .finish();
    apply_layer(
        &tar[..],
        Compression::Uncompressed,
        temp.path(),
        &ApplyOptions::new(WhiteoutMode::Keep),
    )
    .unwrap();
    assert!(temp.path().join(".wh.something").is_file());
    assert!(temp.path().join("d/.wh..wh..opq").is_file());
}

#[test]
fn opaque_marker_in_apply_mode_keeps_only_this_layers_entries() {
    let temp = tempfile::tempdir().unwrap();
    let lower = RawTar::new()
        .file("d/old", b"old")
        .file("d/sub/old", b"old")
        .file("d/sub/kept-name", b"old version")
        .file("other", b"untouched")
        .finish();
    apply_layer(
        &lower[..],
        Compression::Uncompressed,
        temp.path(),
        &ApplyOptions::new(WhiteoutMode::Apply),
    )
    .unwrap();
    // The marker comes after some of this layer's own entries: those stay.
    let upper = RawTar::new()
        .dir("d/")
        .file("d/sub/kept-name", b"new version")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"new")
        .finish();
    apply_layer(
        &upper[..],
        Compression::Uncompressed,
        temp.path(),
        &ApplyOptions::new(WhiteoutMode::Apply),
    )
    .unwrap();
    let mut found: Vec<String> = describe_tree(temp.path(), &|_: &[u8]| false)
        .into_keys()
        .collect();
    found.sort();
    assert_eq!(found, ["d", "d/new", "d/sub", "d/sub/kept-name", "other"]);
    assert_eq!(
        std::fs::read(temp.path().join("d/sub/kept-name")).unwrap(),
        b"new version"
    );
}

/// A sink that fails after a few bytes, like a full disk.
struct FailingSink {
    left: usize,
}

impl Write for FailingSink {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk full"));
        }
        let written = buffer.len().min(self.left);
        self.left -= written;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_sink_stops_the_layer_writer_with_its_error() {
    let temp = tempfile::tempdir().unwrap();
    build_tree(temp.path());
    for options in [
        CompressionOptions::gzip(),
        CompressionOptions::zstd(),
        CompressionOptions::uncompressed(),
    ] {
        let result = write_compressed_layer(
            LayerSource::Tree(temp.path()),
            FailingSink { left: 10 },
            options,
            &DiffOptions::default(),
        );
        match result {
            Err(kiln_snapshotter::archive::ArchiveError::Write(error)) => {
                assert_eq!(error.to_string(), "disk full", "{options:?}")
            }
            other => panic!(
                "{options:?}: expected a write error, got {:?}",
                other.map(|r| r.0)
            ),
        }
    }
}
