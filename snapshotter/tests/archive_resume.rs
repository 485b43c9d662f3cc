//! A layer's diffID resumed from an earlier, similar layer's saved hash states: whatever
//! changed (early, late, nothing, a file added at the end, one removed), the diffID is the
//! sha256 of the tar written, the tar is the one a full walk writes, and only the prefix the
//! two tars share is taken from the reference.

use std::fs;
use std::path::Path;

use kiln_snapshotter::archive::{
    write_layer_from_upper, write_layer_from_upper_resuming, DiffOptions, LayerReference,
    ResumedLayer, MIDSTATE_INTERVAL,
};
use kiln_types::Digest;

/// 40 files of 300 kB (12 MB of tar, three saved states), fixed times.
fn build_tree(root: &Path) {
    for index in 0..40u32 {
        let directory = root.join(format!("d{}", index / 10));
        fs::create_dir_all(&directory).unwrap();
        let content: Vec<u8> = (0..300_000u32)
            .map(|byte| (byte.wrapping_mul(7) ^ index) as u8)
            .collect();
        fs::write(directory.join(format!("f{index:02}")), content).unwrap();
    }
    fix_times(root);
}

fn fix_times(root: &Path) {
    let stamp = fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
    for entry in walk(root) {
        fs::File::open(&entry).unwrap().set_times(stamp).unwrap();
    }
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// The tar of `tree` written with `reference`, checked against a plain full walk.
fn resumed(tree: &Path, reference: Option<(&Path, &ResumedLayer)>) -> (Vec<u8>, ResumedLayer) {
    let reference = reference.map(|(tar, layer)| LayerReference {
        tar: fs::File::open(tar).unwrap(),
        size: layer.stats.size,
        diff_id: layer.stats.diff_id.clone(),
        midstates: layer.midstates.clone(),
    });
    let mut bytes = Vec::new();
    let layer =
        write_layer_from_upper_resuming(tree, &mut bytes, &DiffOptions::default(), reference)
            .unwrap();
    let mut plain = Vec::new();
    let stats = write_layer_from_upper(tree, &mut plain, &DiffOptions::default()).unwrap();
    assert_eq!(
        bytes, plain,
        "the resuming writer wrote other bytes than a full walk"
    );
    assert_eq!(layer.stats, stats);
    assert_eq!(layer.stats.diff_id, Digest::of_bytes(&bytes));
    assert_eq!(layer.stats.size, bytes.len() as u64);
    let lengths: Vec<u64> = layer.midstates.iter().map(|state| state.length).collect();
    let expected: Vec<u64> = (1..=bytes.len() as u64 / MIDSTATE_INTERVAL)
        .map(|index| index * MIDSTATE_INTERVAL)
        .collect();
    assert_eq!(lengths, expected, "a state every interval, in order");
    (bytes, layer)
}

#[test]
fn resumed_diff_ids_equal_full_hashes_whatever_changed() {
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("tree");
    build_tree(&tree);
    let (first_bytes, first) = resumed(&tree, None);
    assert_eq!(first.reused_prefix, 0);
    assert_eq!(
        first.midstates.len(),
        2,
        "12 MB of tar: states at 4 and 8 MiB"
    );
    let reference_tar = scratch.path().join("reference.tar");
    fs::write(&reference_tar, &first_bytes).unwrap();

    // nothing changed: the reference's digest and states, all of it reused
    let (_, same) = resumed(&tree, Some((&reference_tar, &first)));
    assert_eq!(same.reused_prefix, first_bytes.len() as u64);
    assert_eq!(same.midstates, first.midstates);

    // a late change (the last file): resumed from the last state before it
    let late = tree.join("d3/f39");
    let mut content = fs::read(&late).unwrap();
    content[1000] ^= 0xff;
    fs::write(&late, &content).unwrap();
    fix_times(&tree);
    let (late_bytes, late_layer) = resumed(&tree, Some((&reference_tar, &first)));
    assert_eq!(late_layer.reused_prefix, 2 * MIDSTATE_INTERVAL);
    assert_ne!(late_layer.stats.diff_id, first.stats.diff_id);
    assert_eq!(
        late_layer.midstates, first.midstates,
        "the states before the change hold"
    );

    // an early change (the first file): nothing reused, still right
    let early = tree.join("d0/f00");
    let mut content = fs::read(&early).unwrap();
    content[10] ^= 0xff;
    fs::write(&early, &content).unwrap();
    fix_times(&tree);
    let late_tar = scratch.path().join("late.tar");
    fs::write(&late_tar, &late_bytes).unwrap();
    let (_, early_layer) = resumed(&tree, Some((&late_tar, &late_layer)));
    assert_eq!(early_layer.reused_prefix, 0);

    // a file added at the end: the whole reference is a prefix
    fs::write(tree.join("zz-last"), b"appended").unwrap();
    fix_times(&tree);
    let (grown_bytes, grown) = resumed(&tree, None);
    let grown_tar = scratch.path().join("grown.tar");
    fs::write(&grown_tar, &grown_bytes).unwrap();
    fs::remove_file(tree.join("zz-last")).unwrap();
    fix_times(&tree);
    // ... and removed again: the new tar is a prefix of the reference
    let (_, shrunk) = resumed(&tree, Some((&grown_tar, &grown)));
    assert_eq!(shrunk.reused_prefix, 2 * MIDSTATE_INTERVAL);

    // a reference that is unrelated, or whose states are damaged in length, is harmless
    let unrelated = scratch.path().join("unrelated.tar");
    fs::write(&unrelated, vec![7u8; 9 << 20]).unwrap();
    let mut odd = first.clone();
    for state in &mut odd.midstates {
        state.length += 64;
    }
    let _ = resumed(&tree, Some((&unrelated, &odd)));
}
