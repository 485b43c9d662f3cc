//! Checksum and copy of a generated build context: 20,000 files (~100 MB) in 400
//! directories. `cold` hashes everything (fresh cache), `warm` is a no-change rebuild (stat
//! cache hit: only `lstat`), `copy` is `COPY . /dst/` into a fresh directory.
//!
//! Run with `cargo bench -p kiln-worker --bench checksum`.

use std::path::PathBuf;
use std::sync::LazyLock;

use kiln_frontend::dag::op::{CopyAction, FileAction};
use kiln_worker::checksum::{checksum_copy_sources, ChecksumCache};
use kiln_worker::fileops::{apply_action, FileOpOptions, SourceRoot};

const FILES: usize = 20_000;
const DIRECTORIES: usize = 400;

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// The generated context: file sizes cycle from 0 to 10 KiB (average ~5 KiB).
static TREE: LazyLock<Tree> = LazyLock::new(|| {
    let dir = tempfile::tempdir_in(
        std::env::var_os("KILN_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()),
    )
    .expect("temp dir");
    let root = dir.path().join("context");
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut buffer = vec![0u8; 10 * 1024];
    for byte in buffer.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    for index in 0..FILES {
        let directory = root.join(format!("d{:03}", index % DIRECTORIES));
        if index < DIRECTORIES {
            std::fs::create_dir_all(&directory).expect("mkdir");
        }
        let size = (index * 7919) % buffer.len();
        buffer[0] = index as u8;
        buffer[1] = (index >> 8) as u8;
        std::fs::write(directory.join(format!("f{index:05}.dat")), &buffer[..size]).expect("write");
    }
    // Age the files past the racy window.
    std::thread::sleep(std::time::Duration::from_millis(200));
    Tree { _dir: dir, root }
});

fn copy_all() -> CopyAction {
    CopyAction {
        source_input: 0,
        source_path: "/".into(),
        dest_path: "/dst/".into(),
        owner: None,
        mode: None,
        follow_symlinks: true,
        dir_contents_only: true,
        attempt_unpack: false,
        create_dest_path: true,
        allow_wildcard: true,
        allow_empty_wildcard: true,
        always_replace_existing_dest_paths: false,
        include_patterns: Vec::new(),
        exclude_patterns: Vec::new(),
        required_paths: Vec::new(),
        timestamp: None,
    }
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn cold(bencher: divan::Bencher) {
    let source = SourceRoot::build_context(&TREE.root, &[], &[]).expect("source");
    let action = copy_all();
    bencher.bench_local(|| {
        let cache = ChecksumCache::in_memory();
        checksum_copy_sources(&source, [&action], &cache).expect("checksum")
    });
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn warm(bencher: divan::Bencher) {
    let source = SourceRoot::build_context(&TREE.root, &[], &[]).expect("source");
    let action = copy_all();
    let cache = ChecksumCache::in_memory();
    checksum_copy_sources(&source, [&action], &cache).expect("checksum");
    bencher.bench_local(|| checksum_copy_sources(&source, [&action], &cache).expect("checksum"));
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn copy(bencher: divan::Bencher) {
    let source = SourceRoot::build_context(&TREE.root, &[], &[]).expect("source");
    let action = FileAction::Copy(copy_all());
    let parent = TREE.root.parent().expect("parent").to_path_buf();
    bencher
        .with_inputs(|| tempfile::tempdir_in(&parent).expect("dest"))
        .bench_local_values(|dest| {
            apply_action(
                &action,
                dest.path(),
                std::slice::from_ref(&source),
                &FileOpOptions::default(),
            )
            .expect("copy");
            dest
        });
}

fn main() {
    LazyLock::force(&TREE);
    divan::main();
}
