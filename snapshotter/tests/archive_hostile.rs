//! Hostile layer tars (HOSTILE-INPUTS.md section B): every case leaves the victim directory
//! beside the extraction root untouched and creates nothing outside the root.

mod archive_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use archive_support::{Raw, RawTar};
use kiln_snapshotter::archive::{
    apply_layer, AppliedLayer, ApplyOptions, ArchiveError, Compression, WhiteoutMode,
};
use kiln_types::Digest;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temp dir holding `dest` (the extraction root), `victim/hello` (the sentinel) and
/// `dest-evil/secret` (a sibling whose name shares the root's prefix).
struct Harness {
    _temp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    victim: PathBuf,
    /// A unique file name, checked for under the host's /etc and /tmp.
    marker: String,
}

impl Harness {
    fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let base = temp.path().to_path_buf();
        let root = base.join("dest");
        let victim = base.join("victim");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("hello"), b"sentinel").unwrap();
        std::fs::set_permissions(victim.join("hello"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::create_dir(base.join("dest-evil")).unwrap();
        std::fs::write(base.join("dest-evil/secret"), b"secret").unwrap();
        let marker = format!(
            "kiln-archive-hostile-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        Harness {
            _temp: temp,
            base,
            root,
            victim,
            marker,
        }
    }

    fn sentinel(&self) -> PathBuf {
        self.victim.join("hello")
    }

    fn apply(&self, tar: &[u8], mode: WhiteoutMode) -> Result<AppliedLayer, ArchiveError> {
        apply_layer(
            tar,
            Compression::Uncompressed,
            &self.root,
            &ApplyOptions::new(mode),
        )
    }

    /// The sentinel is unchanged and nothing appeared outside the root.
    fn assert_contained(&self) {
        let sentinel = self.sentinel();
        let metadata = std::fs::symlink_metadata(&sentinel).expect("sentinel still there");
        assert!(metadata.is_file(), "sentinel is still a regular file");
        assert_eq!(std::fs::read(&sentinel).unwrap(), b"sentinel");
        assert_eq!(metadata.mode() & 0o7777, 0o644, "sentinel mode unchanged");
        assert_eq!(
            (metadata.uid(), metadata.gid()),
            (0, 0),
            "sentinel owner unchanged"
        );
        assert_eq!(metadata.nlink(), 1, "no hardlink to the sentinel");
        assert_eq!(names(&self.victim), set(&["hello"]));
        assert_eq!(names(&self.base), set(&["dest", "dest-evil", "victim"]));
        assert_eq!(names(&self.base.join("dest-evil")), set(&["secret"]));
        assert_eq!(
            std::fs::read(self.base.join("dest-evil/secret")).unwrap(),
            b"secret"
        );
        for host in ["/etc", "/tmp", "/"] {
            let path = Path::new(host).join(&self.marker);
            assert!(
                std::fs::symlink_metadata(&path).is_err(),
                "{} was created on the host",
                path.display()
            );
        }
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| item.to_string()).collect()
}

#[test]
fn names_leaving_the_root_are_rejected() {
    for name in [
        "../victim/x",
        "/../victim/x",
        "./../victim/x",
        "a/../../victim/x",
        "../dest-evil/x",
    ] {
        let harness = Harness::new();
        let tar = RawTar::new().file(name, b"pwned").finish();
        for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
            let result = harness.apply(&tar, mode);
            assert!(
                matches!(result, Err(ArchiveError::UnsafePath { .. })),
                "{name}: {result:?}"
            );
        }
        harness.assert_contained();
    }
    let harness = Harness::new();
    let tar = RawTar::new().dir("..").finish();
    assert!(matches!(
        harness.apply(&tar, WhiteoutMode::Overlay),
        Err(ArchiveError::UnsafePath { .. })
    ));
    harness.assert_contained();
}

#[test]
fn absolute_names_are_rerooted_inside() {
    let harness = Harness::new();
    let name = format!("/etc/{}", harness.marker);
    let tar = RawTar::new().file(&name, b"inside").finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(
        std::fs::read(harness.root.join("etc").join(&harness.marker)).unwrap(),
        b"inside"
    );
    harness.assert_contained();
}

#[test]
fn writes_through_symlinks_stay_inside_the_root() {
    for (target, must_land) in [
        ("/etc", true),
        // The kernel resolves `dummy` before `..`, as a shell would: refused, since no
        // `dummy` exists (Docker folds it lexically and lands in etc; both are safe).
        ("/dummy/../etc", false),
        ("../../../../etc", true),
        ("../../../../../../../../../etc", true),
    ] {
        // With the target directory present in the layer: the file lands in the root's etc.
        let harness = Harness::new();
        let inner = format!("localetc/{}", harness.marker);
        let tar = RawTar::new()
            .dir("etc/")
            .symlink("localetc", target)
            .file(&inner, b"x")
            .finish();
        let result = harness.apply(&tar, WhiteoutMode::Overlay);
        if must_land || result.is_ok() {
            result.unwrap();
            assert!(
                harness.root.join("etc").join(&harness.marker).is_file(),
                "{target}: the file lands in the root's etc"
            );
        }
        harness.assert_contained();

        // Without it: created inside or refused, never on the host.
        let harness = Harness::new();
        let tar = RawTar::new()
            .symlink("localetc", target)
            .file(&inner, b"x")
            .finish();
        let _ = harness.apply(&tar, WhiteoutMode::Overlay);
        harness.assert_contained();
    }
}

#[test]
fn chained_symlinks_stay_inside_the_root() {
    let harness = Harness::new();
    let victim = harness.victim.display().to_string();
    let tar = RawTar::new()
        .symlink("a", "b")
        .symlink("b", "c")
        .symlink("c", "../../victim")
        .file("a/hello", b"pwned")
        .symlink("d", "e")
        .symlink("e", &victim)
        .file("d/hello", b"pwned")
        .finish();
    let _ = harness.apply(&tar, WhiteoutMode::Overlay);
    harness.assert_contained();

    // When the chain ends at a directory that exists inside the root, the file lands there.
    let harness = Harness::new();
    let tar = RawTar::new()
        .dir("victim/")
        .symlink("a", "b")
        .symlink("b", "/victim")
        .file("a/hello", b"inside")
        .finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(
        std::fs::read(harness.root.join("victim/hello")).unwrap(),
        b"inside"
    );
    harness.assert_contained();
}

#[test]
fn symlink_to_slash_then_write_lands_inside() {
    let harness = Harness::new();
    let inner = format!("foo/tmp/{}", harness.marker);
    let tar = RawTar::new()
        .symlink("foo", "/")
        .file(&inner, b"x")
        .finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
    assert!(harness.root.join("tmp").join(&harness.marker).is_file());
    harness.assert_contained();
}

#[test]
fn symlink_to_the_victim_by_host_path_is_not_followed() {
    let harness = Harness::new();
    let victim = harness.victim.display().to_string();
    let relative = "../victim";
    for target in [victim.as_str(), relative] {
        let tar = RawTar::new()
            .symlink("link", target)
            .file("link/hello", b"pwned")
            .finish();
        let _ = harness.apply(&tar, WhiteoutMode::Overlay);
        harness.assert_contained();
    }
}

#[test]
fn hardlinks_leaving_the_root_are_rejected() {
    for target in ["../victim/hello", "/../victim/hello", "../dest-evil/secret"] {
        let harness = Harness::new();
        let tar = RawTar::new().hardlink("stolen", target).finish();
        let result = harness.apply(&tar, WhiteoutMode::Overlay);
        assert!(
            matches!(result, Err(ArchiveError::UnsafePath { .. })),
            "{target}: {result:?}"
        );
        harness.assert_contained();
    }
}

#[test]
fn hardlinks_through_symlinked_dirs_are_rejected() {
    let harness = Harness::new();
    let victim = harness.victim.display().to_string();
    for target in ["../victim", "../../victim", victim.as_str()] {
        let tar = RawTar::new()
            .symlink("sym", target)
            .hardlink("stolen", "sym/hello")
            .finish();
        let result = harness.apply(&tar, WhiteoutMode::Overlay);
        assert!(
            matches!(result, Err(ArchiveError::Filesystem { .. })),
            "{target}: {result:?}"
        );
        assert!(std::fs::symlink_metadata(harness.root.join("stolen")).is_err());
        harness.assert_contained();
    }
}

#[test]
fn absolute_hardlink_target_is_rerooted_inside() {
    let harness = Harness::new();
    let tar = RawTar::new()
        .file("usr/bin/x", b"binary")
        .hardlink("y", "/usr/bin/x")
        .finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
    let x = std::fs::metadata(harness.root.join("usr/bin/x")).unwrap();
    let y = std::fs::metadata(harness.root.join("y")).unwrap();
    assert_eq!(x.ino(), y.ino());
    assert_eq!(x.nlink(), 2);
    harness.assert_contained();
}

/// CVE-2021-32760: containerd chmod-ed the target of a symlink reached through a hardlink.
#[test]
fn chmod_and_chown_never_go_through_links() {
    let harness = Harness::new();
    let sentinel = harness.sentinel().display().to_string();
    let mut tar = RawTar::new();
    let mut link = Raw::new(b"s", b'2');
    link.link = sentinel.as_bytes();
    link.mode = 0o777;
    link.uid = 1234;
    link.gid = 1234;
    tar.entry(link, b"");
    let mut hard = Raw::new(b"h", b'1');
    hard.link = b"s";
    hard.mode = 0o4777;
    hard.uid = 4321;
    tar.entry(hard, b"");
    // A relative link to the sentinel, then entries of other types replacing it.
    tar.symlink("r", "../victim/hello");
    let mut dir = Raw::new(b"r", b'5');
    dir.mode = 0o777;
    dir.uid = 99;
    tar.entry(dir, b"");
    tar.symlink("f", "../victim/hello");
    let mut fifo = Raw::new(b"f", b'6');
    fifo.mode = 0o666;
    fifo.uid = 99;
    tar.entry(fifo, b"");
    tar.symlink("c", &sentinel);
    let mut device = Raw::new(b"c", b'3');
    device.mode = 0o666;
    device.major = 1;
    device.minor = 3;
    tar.entry(device, b"");
    let tar = tar.finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();

    let s = std::fs::symlink_metadata(harness.root.join("s")).unwrap();
    assert!(s.file_type().is_symlink());
    assert_eq!(
        (s.uid(), s.gid()),
        (1234, 1234),
        "the link itself was chowned"
    );
    let h = std::fs::symlink_metadata(harness.root.join("h")).unwrap();
    assert!(
        h.file_type().is_symlink(),
        "a hardlink to a symlink is that symlink"
    );
    assert_eq!(h.ino(), s.ino());
    let r = std::fs::symlink_metadata(harness.root.join("r")).unwrap();
    assert!(r.is_dir());
    assert_eq!(r.mode() & 0o7777, 0o777);
    let f = std::fs::symlink_metadata(harness.root.join("f")).unwrap();
    assert!(f.file_type().is_fifo());
    let c = std::fs::symlink_metadata(harness.root.join("c")).unwrap();
    assert!(c.file_type().is_char_device());
    assert_eq!(c.mode() & 0o7777, 0o666);
    harness.assert_contained();
}

/// RUSTSEC-2018-0002: a link, then a regular file of the same name, must replace the link.
#[test]
fn a_file_replaces_a_link_of_the_same_name() {
    let harness = Harness::new();
    let sentinel = harness.sentinel().display().to_string();
    let tar = RawTar::new()
        .symlink("abs", &sentinel)
        .file("abs", b"pwned")
        .symlink("rel", "../victim/hello")
        .file("rel", b"pwned")
        .file("orig", b"original")
        .hardlink("hard", "orig")
        .file("hard", b"replaced")
        .finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
    for name in ["abs", "rel"] {
        let path = harness.root.join(name);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read(&path).unwrap(), b"pwned");
    }
    assert_eq!(
        std::fs::read(harness.root.join("orig")).unwrap(),
        b"original"
    );
    assert_eq!(
        std::fs::read(harness.root.join("hard")).unwrap(),
        b"replaced"
    );
    assert_eq!(
        std::fs::metadata(harness.root.join("orig"))
            .unwrap()
            .nlink(),
        1
    );
    harness.assert_contained();
}

#[test]
fn invalid_whiteouts_are_rejected() {
    for name in [".wh..", ".wh...", "etc/.wh..", ".wh.", "etc/.wh..."] {
        for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
            let harness = Harness::new();
            let tar = RawTar::new().dir("etc/").file(name, b"").finish();
            let result = harness.apply(&tar, mode);
            assert!(
                matches!(result, Err(ArchiveError::InvalidWhiteout { .. })),
                "{name} {mode:?}: {result:?}"
            );
            assert!(harness.root.join("etc").is_dir(), "{name}: etc survives");
            harness.assert_contained();
        }
    }
}

#[test]
fn whiteout_of_a_link_removes_the_link_not_its_target() {
    let harness = Harness::new();
    let victim = harness.victim.display().to_string();
    let lower = RawTar::new()
        .dir("target/")
        .file("target/keep", b"kept")
        .symlink("link", "target")
        .symlink("hostlink", &victim)
        .symlink("filelink", "target/keep")
        .finish();
    harness.apply(&lower, WhiteoutMode::Apply).unwrap();
    let upper = RawTar::new()
        .file(".wh.link", b"")
        .file(".wh.hostlink", b"")
        .file(".wh.filelink", b"")
        .finish();
    harness.apply(&upper, WhiteoutMode::Apply).unwrap();
    for name in ["link", "hostlink", "filelink"] {
        assert!(std::fs::symlink_metadata(harness.root.join(name)).is_err());
    }
    assert_eq!(
        std::fs::read(harness.root.join("target/keep")).unwrap(),
        b"kept"
    );
    harness.assert_contained();

    // Overlay mode: the link is replaced by a whiteout device; its target is untouched.
    let harness = Harness::new();
    let tar = RawTar::new()
        .symlink("hostlink", &victim)
        .file(".wh.hostlink", b"")
        .finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
    let whiteout = std::fs::symlink_metadata(harness.root.join("hostlink")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    harness.assert_contained();
}

/// CVE-2025-62518 / RUSTSEC-2026-0068: when PAX and ustar sizes disagree, PAX wins (as Go's
/// reader does), so no entry can be smuggled inside another's data.
#[test]
fn pax_size_overrides_the_ustar_size() {
    for ustar_size in [0u64, 5, 3000] {
        let harness = Harness::new();
        let mut smuggled = RawTar::new();
        smuggled.file("smuggled", b"hidden");
        let mut data = smuggled.bytes.clone();
        data.resize(1024, 0);
        let mut tar = RawTar::new();
        tar.pax(&[(b"size", b"1024")]);
        let mut raw = Raw::new(b"a", b'0');
        raw.size = ustar_size;
        tar.entry(raw, &data);
        tar.file("b", b"after");
        let tar = tar.finish();
        harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
        assert_eq!(
            std::fs::metadata(harness.root.join("a")).unwrap().len(),
            1024,
            "ustar size {ustar_size}"
        );
        assert!(!harness.root.join("smuggled").exists());
        assert_eq!(std::fs::read(harness.root.join("b")).unwrap(), b"after");
        harness.assert_contained();
    }
}

/// GHSA-3pv8-6f4r-ffg2: a PAX header describes the next file entry, not a GNU long-name
/// header between them (tar >= 0.4.46), as in Go's reader.
#[test]
fn pax_header_applies_to_the_file_after_a_long_name() {
    let harness = Harness::new();
    let mut tar = RawTar::new();
    tar.pax(&[(b"mtime", b"1234567890.5")]);
    let mut long_name = Raw::new(b"././@LongLink", b'L');
    long_name.size = 13;
    tar.entry(long_name, b"longname.txt\0");
    tar.file("short", b"data");
    let tar = tar.finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
    assert_eq!(names(&harness.root), set(&["longname.txt"]));
    let file = harness.root.join("longname.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    let metadata = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (metadata.mtime(), metadata.mtime_nsec()),
        (1234567890, 500_000_000)
    );
    harness.assert_contained();
}

fn zero_file_tar(size: usize) -> Vec<u8> {
    let mut raw_tar = RawTar::new();
    let mut raw = Raw::new(b"zeros", b'0');
    raw.size = size as u64;
    raw_tar
        .bytes
        .extend_from_slice(&archive_support::header(&raw));
    raw_tar.bytes.resize(raw_tar.bytes.len() + size, 0);
    raw_tar.finish()
}

#[test]
fn a_compression_bomb_stops_at_the_size_limit() {
    let tar = zero_file_tar(32 << 20);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).unwrap();
    let gzip = gzip.finish().unwrap();
    let zstd = zstd::encode_all(&tar[..], 1).unwrap();
    assert!(gzip.len() < 1 << 20 && zstd.len() < 1 << 20);
    for (blob, compression) in [(gzip, Compression::Gzip), (zstd, Compression::Zstd)] {
        let harness = Harness::new();
        let options = ApplyOptions {
            max_uncompressed_size: Some(4 << 20),
            ..ApplyOptions::default()
        };
        let result = apply_layer(&blob[..], compression, &harness.root, &options);
        assert!(
            matches!(result, Err(ArchiveError::TooLarge { limit }) if limit == 4 << 20),
            "{compression:?}: {result:?}"
        );
        let written = std::fs::metadata(harness.root.join("zeros")).map_or(0, |m| m.len());
        assert!(written <= 4 << 20, "stopped at the limit, wrote {written}");
        harness.assert_contained();

        // Under the limit it applies.
        let harness = Harness::new();
        let options = ApplyOptions {
            max_uncompressed_size: Some(33 << 20),
            ..ApplyOptions::default()
        };
        apply_layer(&blob[..], compression, &harness.root, &options).unwrap();
    }
}

#[test]
fn the_diff_id_is_verified() {
    let tar = RawTar::new().file("a", b"content").finish();
    let right = Digest::of_bytes(&tar);
    let wrong = Digest::of_bytes(b"something else");
    let harness = Harness::new();
    let options = ApplyOptions {
        expected_diff_id: Some(wrong.clone()),
        ..ApplyOptions::default()
    };
    let result = apply_layer(&tar[..], Compression::Uncompressed, &harness.root, &options);
    match result {
        Err(ArchiveError::DiffIdMismatch { expected, found }) => {
            assert_eq!(expected, wrong);
            assert_eq!(found, right);
        }
        other => panic!("expected a diffID mismatch, got {other:?}"),
    }
    let options = ApplyOptions {
        expected_diff_id: Some(right.clone()),
        ..ApplyOptions::default()
    };
    let applied =
        apply_layer(&tar[..], Compression::Uncompressed, &harness.root, &options).unwrap();
    assert_eq!(applied.diff_id, right);
    assert_eq!(applied.uncompressed_size, tar.len() as u64);
    harness.assert_contained();
}

#[test]
fn trailing_bytes_after_the_end_marker_are_part_of_the_diff_id() {
    let mut tar = RawTar::new().file("a", b"content").finish();
    tar.extend_from_slice(&[0u8; 10240]);
    let harness = Harness::new();
    let applied = apply_layer(
        &tar[..],
        Compression::Uncompressed,
        &harness.root,
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(applied.diff_id, Digest::of_bytes(&tar));
    assert_eq!(applied.uncompressed_size, tar.len() as u64);
}

#[test]
fn truncated_streams_fail() {
    let tar = RawTar::new().file("a", &[7u8; 4000]).finish();
    for cut in [100, 512, 700, 3000] {
        let harness = Harness::new();
        let result = apply_layer(
            &tar[..cut],
            Compression::Uncompressed,
            &harness.root,
            &ApplyOptions::default(),
        );
        assert!(
            matches!(result, Err(ArchiveError::Read(_))),
            "cut at {cut}: {result:?}"
        );
        harness.assert_contained();
    }
    // A gzip stream cut short fails too.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&tar).unwrap();
    let gzip = gzip.finish().unwrap();
    let harness = Harness::new();
    let result = apply_layer(
        &gzip[..gzip.len() - 10],
        Compression::Gzip,
        &harness.root,
        &ApplyOptions::default(),
    );
    assert!(matches!(result, Err(ArchiveError::Read(_))), "{result:?}");
}

#[test]
fn overlay_xattrs_in_a_tar_are_dropped() {
    let harness = Harness::new();
    let mut tar = RawTar::new();
    tar.pax(&[
        (b"SCHILY.xattr.trusted.overlay.opaque", b"y"),
        (b"SCHILY.xattr.trusted.overlay.redirect", b"/victim"),
        (b"SCHILY.xattr.user.kept", b"yes"),
    ]);
    let mut dir = Raw::new(b"d/", b'5');
    dir.mode = 0o755;
    tar.entry(dir, b"");
    let tar = tar.finish();
    harness.apply(&tar, WhiteoutMode::Overlay).unwrap();
    let xattrs = archive_support::xattrs(&harness.root.join("d"));
    assert_eq!(
        xattrs.keys().cloned().collect::<Vec<_>>(),
        vec![b"user.kept".to_vec()]
    );
    harness.assert_contained();
}

#[test]
fn a_non_directory_cannot_replace_the_root() {
    let harness = Harness::new();
    let tar = RawTar::new().symlink("./", "/etc").finish();
    let result = harness.apply(&tar, WhiteoutMode::Overlay);
    assert!(
        matches!(result, Err(ArchiveError::UnsafePath { .. })),
        "{result:?}"
    );
    assert!(harness.root.is_dir());
    harness.assert_contained();
}
