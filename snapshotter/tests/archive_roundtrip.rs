//! Round trips through a real overlayfs: changes made through a merged view (as RUN makes
//! them) are diffed from the upper directory, applied back, and must reproduce the upper
//! (overlay mode) and the merged view (overlay lower, and flattened apply mode).

mod archive_support;

use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::Path;

use archive_support::{
    describe_tree, entry_names, hardlink_groups, set_mtime, tree_differences, OverlayMount,
};
use kiln_snapshotter::archive::{
    apply_layer, write_layer_from_upper, write_tree, ApplyOptions, Compression, DiffOptions,
    WhiteoutMode,
};
use kiln_types::Digest;
use rustix::fs::{FileType, Mode, XattrFlags};

/// A `security.capability` value (revision 2, effective, CAP_NET_BIND_SERVICE permitted).
const CAPABILITY: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn write(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
}

fn mknod(path: &Path, file_type: FileType, mode: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        file_type,
        Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
    chmod(path, mode);
}

fn build_lower(lower: &Path) {
    for dir in ["a", "opq/sub", "dir_to_file/inner", "keepdir"] {
        std::fs::create_dir_all(lower.join(dir)).unwrap();
    }
    write(&lower.join("a/gone"), b"deleted above");
    write(&lower.join("a/stays"), b"stays");
    write(&lower.join("opq/old1"), b"hidden by opaque");
    write(&lower.join("opq/sub/old2"), b"hidden by opaque");
    write(&lower.join("replaced"), b"old content");
    write(&lower.join("dir_to_file/inner/x"), b"x");
    write(&lower.join("chmodme"), b"mode changes above");
    write(&lower.join("keepdir/untouched"), b"untouched");
    symlink("a/stays", lower.join("oldlink")).unwrap();
    for (index, path) in [
        "a/gone", "a/stays", "opq/old1", "replaced", "chmodme", "a", "opq",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&lower.join(path), 1_500_000_000 + index as i64);
    }
}

/// Makes, through the merged view, every kind of change a RUN step can make.
fn change_through_merged(merged: &Path) {
    // Deletions: a whiteout device in the upper.
    std::fs::remove_file(merged.join("a/gone")).unwrap();
    // Delete a directory and make it again: an opaque directory in the upper.
    std::fs::remove_dir_all(merged.join("opq")).unwrap();
    std::fs::create_dir(merged.join("opq")).unwrap();
    write(&merged.join("opq/new"), b"new in opaque dir");
    // Replace contents, a link, a directory by a file.
    write(&merged.join("replaced"), b"new content");
    std::fs::remove_file(merged.join("oldlink")).unwrap();
    symlink("/absolute/target/elsewhere", merged.join("oldlink")).unwrap();
    std::fs::remove_dir_all(merged.join("dir_to_file")).unwrap();
    write(&merged.join("dir_to_file"), b"now a file");
    // Metadata-only change (copy-up).
    chmod(&merged.join("chmodme"), 0o600);
    setxattr(&merged.join("chmodme"), "user.added", b"after copy-up");

    // New things of every type.
    let new = merged.join("newdir");
    std::fs::create_dir(&new).unwrap();
    write(&new.join("setuid"), b"#!/bin/sh\n");
    chmod(&new.join("setuid"), 0o4755);
    write(&new.join("setgid"), b"");
    chmod(&new.join("setgid"), 0o2750);
    std::fs::create_dir(new.join("sticky")).unwrap();
    chmod(&new.join("sticky"), 0o1777);
    write(&new.join("owned"), b"owned by 123:456");
    lchown(new.join("owned"), Some(123), Some(456)).unwrap();
    write(
        &new.join("big"),
        &(0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    write(&new.join("empty"), b"");
    write(&new.join("h1"), b"linked three times");
    std::fs::hard_link(new.join("h1"), new.join("h2")).unwrap();
    std::fs::hard_link(new.join("h1"), merged.join("a/h3")).unwrap();
    mknod(&new.join("fifo"), FileType::Fifo, 0o640, 0, 0);
    mknod(&new.join("null"), FileType::CharacterDevice, 0o666, 1, 3);
    mknod(&new.join("loop"), FileType::BlockDevice, 0o660, 7, 0);
    symlink("setuid", new.join("rel_link")).unwrap();
    lchown(new.join("rel_link"), Some(7), Some(8)).unwrap();
    let long_target = format!("/{}/target", "t".repeat(150));
    symlink(&long_target, new.join("long_link")).unwrap();
    let long_dir = new.join("d".repeat(120)).join("e".repeat(120));
    std::fs::create_dir_all(&long_dir).unwrap();
    write(&long_dir.join("f".repeat(200)), b"long path");
    setxattr(&new.join("setuid"), "user.binary", b"\0\n=\xff value");
    setxattr(&new, "user.dir", b"on a directory");
    setxattr(&new.join("owned"), "security.capability", &CAPABILITY);
    lchown(&new, Some(1000), Some(1000)).unwrap();
    chmod(&new, 0o750);

    // Times last, directories after their contents.
    let mut time = 1_700_000_000;
    for path in [
        "opq/new",
        "replaced",
        "dir_to_file",
        "newdir/setuid",
        "newdir/owned",
        "newdir/big",
        "newdir/h1",
        "newdir/fifo",
        "newdir/null",
        "newdir/rel_link",
        "oldlink",
        "opq",
        "newdir/sticky",
        "newdir",
        "a",
    ] {
        set_mtime(&merged.join(path), time);
        time += 1000;
    }
}

/// xattrs compared between an upper and its applied copy: user ones, capabilities and the
/// opaque marker (other trusted.overlay.* are overlayfs bookkeeping such as origin).
fn upper_xattrs(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name == b"security.capability"
        || name == b"trusted.overlay.opaque"
}

fn merged_xattrs(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

fn assert_same_tree(expected: &Path, found: &Path, keep: &dyn Fn(&[u8]) -> bool, what: &str) {
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
fn overlay_upper_diff_applies_back_to_the_same_trees() {
    let temp = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = temp.path().join(name);
        std::fs::create_dir(&path).unwrap();
        path
    };
    let (lower, upper, work, merged) = (dir("lower"), dir("upper"), dir("work"), dir("merged"));
    build_lower(&lower);

    let mount = OverlayMount::mount(&[&lower], Some((&upper, &work)), &merged);
    change_through_merged(&merged);
    // What the container saw, to compare with the views rebuilt from the layer.
    let merged_description = describe_tree(&merged, &merged_xattrs);
    let merged_links = hardlink_groups(&merged);
    drop(mount);

    let mut tar = Vec::new();
    let stats = write_layer_from_upper(&upper, &mut tar, &DiffOptions::default()).unwrap();
    assert_eq!(stats.diff_id, Digest::of_bytes(&tar));
    assert_eq!(stats.size, tar.len() as u64);
    assert_eq!(stats.whiteouts, 1);
    assert_eq!(stats.opaque_dirs, 1);
    assert_eq!(stats.hardlinks, 2);
    let names = entry_names(&tar);
    let position = |name: &str| {
        names
            .iter()
            .position(|entry| entry == name)
            .unwrap_or_else(|| panic!("{name} not in {names:?}"))
    };
    assert!(position("a/") < position("a/.wh.gone"));
    assert!(position("opq/") < position("opq/.wh..wh..opq"));
    assert!(position("opq/.wh..wh..opq") < position("opq/new"));
    assert!(position("newdir/") < position("newdir/big"));
    let mut sorted = names.clone();
    sorted.sort_by(|left, right| {
        // Depth-first, names sorted bytewise within each directory.
        left.trim_end_matches('/')
            .split('/')
            .cmp(right.trim_end_matches('/').split('/'))
    });
    assert_eq!(names, sorted, "depth-first sorted order");

    // The same upper always gives the same bytes.
    let mut again = Vec::new();
    write_layer_from_upper(&upper, &mut again, &DiffOptions::default()).unwrap();
    assert_eq!(tar, again);

    // Overlay mode: the applied layer is the upper again.
    let applied = dir("applied");
    let result = apply_layer(
        &tar[..],
        Compression::Uncompressed,
        &applied,
        &ApplyOptions {
            expected_diff_id: Some(stats.diff_id.clone()),
            ..ApplyOptions::new(WhiteoutMode::Overlay)
        },
    )
    .unwrap();
    assert_eq!(result.diff_id, stats.diff_id);
    assert_eq!(result.whiteouts, 2);
    assert_same_tree(&upper, &applied, &upper_xattrs, "applied layer vs upper");

    // Used as an overlay lower above the original lower, it shows what the container saw.
    let view = dir("view");
    let mount = OverlayMount::mount(&[&applied, &lower], None, &view);
    let differences = tree_differences(&merged_description, &describe_tree(&view, &merged_xattrs));
    assert!(
        differences.is_empty(),
        "merged views:\n{}",
        differences.join("\n")
    );
    assert_eq!(merged_links, hardlink_groups(&view));
    drop(mount);

    // Apply mode: the lower flattened, then the diff applied on top, is the merged view.
    let flat = dir("flat");
    let mut lower_tar = Vec::new();
    write_tree(&lower, &mut lower_tar, &DiffOptions::default()).unwrap();
    apply_layer(
        &lower_tar[..],
        Compression::Uncompressed,
        &flat,
        &ApplyOptions::new(WhiteoutMode::Apply),
    )
    .unwrap();
    assert_same_tree(&lower, &flat, &merged_xattrs, "lower through write_tree");
    apply_layer(
        &tar[..],
        Compression::Uncompressed,
        &flat,
        &ApplyOptions::new(WhiteoutMode::Apply),
    )
    .unwrap();
    let differences = tree_differences(&merged_description, &describe_tree(&flat, &merged_xattrs));
    assert!(
        differences.is_empty(),
        "flattened:\n{}",
        differences.join("\n")
    );
    assert_eq!(merged_links, hardlink_groups(&flat));
}

#[test]
fn applied_layers_stack_as_overlay_lowers() {
    // Three layers, each diffed from a real upper over the ones below, applied into fresh
    // directories, then mounted together: the result is the last container's view.
    let temp = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let path = temp.path().join(name);
        std::fs::create_dir(&path).unwrap();
        path
    };
    let base = dir("base");
    build_lower(&base);
    let steps: [&dyn Fn(&Path); 3] = [
        &|merged: &Path| {
            std::fs::create_dir(merged.join("etc")).unwrap();
            write(&merged.join("etc/conf"), b"v1");
            std::fs::remove_file(merged.join("a/gone")).unwrap();
        },
        &|merged: &Path| {
            write(&merged.join("etc/conf"), b"v2");
            write(&merged.join("a/gone"), b"back again");
            std::fs::remove_dir_all(merged.join("keepdir")).unwrap();
        },
        &|merged: &Path| {
            std::fs::remove_dir_all(merged.join("etc")).unwrap();
            std::fs::create_dir(merged.join("etc")).unwrap();
            write(&merged.join("etc/other"), b"fresh");
            std::fs::create_dir(merged.join("keepdir")).unwrap();
        },
    ];
    let mut lowers = vec![base.clone()];
    let mut last_view = None;
    for (index, step) in steps.iter().enumerate() {
        let upper = dir(&format!("upper{index}"));
        let work = dir(&format!("work{index}"));
        let merged = dir(&format!("merged{index}"));
        let lower_refs: Vec<&Path> = lowers.iter().rev().map(|path| path.as_path()).collect();
        let mount = OverlayMount::mount(&lower_refs, Some((&upper, &work)), &merged);
        step(&merged);
        last_view = Some(describe_tree(&merged, &merged_xattrs));
        drop(mount);
        let mut tar = Vec::new();
        write_layer_from_upper(&upper, &mut tar, &DiffOptions::default()).unwrap();
        let layer = dir(&format!("layer{index}"));
        apply_layer(
            &tar[..],
            Compression::Uncompressed,
            &layer,
            &ApplyOptions::default(),
        )
        .unwrap();
        lowers.push(layer);
    }
    let view = dir("view");
    let lower_refs: Vec<&Path> = lowers.iter().rev().map(|path| path.as_path()).collect();
    let mount = OverlayMount::mount(&lower_refs, None, &view);
    let found = describe_tree(&view, &merged_xattrs);
    drop(mount);
    let differences = tree_differences(&last_view.unwrap(), &found);
    assert!(
        differences.is_empty(),
        "stacked view:\n{}",
        differences.join("\n")
    );
    assert_eq!(
        std::fs::read_dir(temp.path().join("view")).unwrap().count(),
        0,
        "unmounted"
    );
}
