//! Content checksums of copy sources: which changes count and which do not, the
//! `.dockerignore` and wildcard selections, and the stat cache (reads counted).

mod fileops_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fileops_support::{build, copy_action};
use kiln_frontend::dag::op::CopyAction;
use kiln_worker::checksum::{checksum_copy_sources, checksum_path, ChecksumCache};
use kiln_worker::fileops::SourceRoot;

const TREE: &str = "
    f a.txt 644 A
    f b.txt 644 B
    f notes.md 644 N
    d app 755
    f app/main.rs 644 fn main() {}
    l app/link main.rs
    d other 755
    f other/x 644 X
";

fn digest(source: &SourceRoot, actions: &[CopyAction]) -> kiln_types::Digest {
    checksum_copy_sources(source, actions.iter(), &ChecksumCache::in_memory()).unwrap()
}

/// Builds TREE, checksums `actions`, applies `change`, checksums again, and checks whether
/// the digest changed. `context` picks a build-context source (owners 0:0, .dockerignore).
fn check(actions: &[CopyAction], context: bool, change: impl FnOnce(&Path), expect_changed: bool) {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), TREE);
    let source = || {
        if context {
            SourceRoot::build_context_with_dockerignore(dir.path()).unwrap()
        } else {
            SourceRoot::new(dir.path())
        }
    };
    let before = digest(&source(), actions);
    change(dir.path());
    let after = digest(&source(), actions);
    assert_eq!(
        before != after,
        expect_changed,
        "before {before} after {after}"
    );
}

fn app() -> Vec<CopyAction> {
    vec![copy_action("app", "/app/")]
}

#[test]
fn unrelated_edits_do_not_count() {
    check(
        &app(),
        true,
        |d| std::fs::write(d.join("other/x"), "changed").unwrap(),
        false,
    );
    check(
        &app(),
        true,
        |d| std::fs::write(d.join("new-file"), "new").unwrap(),
        false,
    );
    check(
        &app(),
        true,
        |d| std::fs::remove_file(d.join("notes.md")).unwrap(),
        false,
    );
}

#[test]
fn touching_does_not_count() {
    check(
        &app(),
        true,
        |d| {
            let time = rustix::fs::Timespec {
                tv_sec: 1_000,
                tv_nsec: 5,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                d.join("app/main.rs"),
                &rustix::fs::Timestamps {
                    last_access: time,
                    last_modification: time,
                },
                rustix::fs::AtFlags::empty(),
            )
            .unwrap();
        },
        false,
    );
}

#[test]
fn selected_changes_count() {
    check(
        &app(),
        true,
        |d| std::fs::write(d.join("app/main.rs"), "fn main() {1}").unwrap(),
        true,
    );
    check(
        &app(),
        true,
        |d| {
            std::fs::set_permissions(
                d.join("app/main.rs"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap()
        },
        true,
    );
    check(
        &app(),
        true,
        |d| {
            std::fs::remove_file(d.join("app/link")).unwrap();
            std::os::unix::fs::symlink("other", d.join("app/link")).unwrap();
        },
        true,
    );
    check(
        &app(),
        true,
        |d| {
            rustix::fs::lsetxattr(
                d.join("app/main.rs"),
                "user.flag",
                b"1",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap()
        },
        true,
    );
    check(
        &app(),
        true,
        |d| std::fs::write(d.join("app/added"), "").unwrap(),
        true,
    );
    check(
        &app(),
        true,
        |d| std::fs::rename(d.join("app/main.rs"), d.join("app/lib.rs")).unwrap(),
        true,
    );
}

#[test]
fn owners_count_except_for_the_context() {
    let chown =
        |d: &Path| std::os::unix::fs::lchown(d.join("app/main.rs"), Some(7), Some(8)).unwrap();
    check(&app(), false, chown, true);
    check(&app(), true, chown, false);
}

#[test]
fn dockerignored_files_do_not_count() {
    let ignore = |d: &Path| std::fs::write(d.join(".dockerignore"), "app/link\n*.md\n").unwrap();
    let whole = vec![copy_action(".", "/")];
    check(
        &whole,
        true,
        |d| {
            ignore(d);
            // Only the .dockerignore itself appears; then edits of ignored files change nothing.
        },
        true,
    );
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), TREE);
    ignore(dir.path());
    let source = || SourceRoot::build_context_with_dockerignore(dir.path()).unwrap();
    let before = digest(&source(), &whole);
    std::fs::write(dir.path().join("notes.md"), "edited").unwrap();
    std::fs::remove_file(dir.path().join("app/link")).unwrap();
    assert_eq!(digest(&source(), &whole), before);
    std::fs::write(dir.path().join("a.txt"), "edited").unwrap();
    assert_ne!(digest(&source(), &whole), before);
}

#[test]
fn wildcard_selections() {
    let txt = vec![copy_action("*.txt", "/")];
    check(
        &txt,
        true,
        |d| std::fs::write(d.join("notes.md"), "x").unwrap(),
        false,
    );
    check(
        &txt,
        true,
        |d| std::fs::write(d.join("c.txt"), "x").unwrap(),
        true,
    );
    check(
        &txt,
        true,
        |d| std::fs::write(d.join("b.txt"), "x").unwrap(),
        true,
    );
}

#[test]
fn include_and_exclude_patterns() {
    let mut action = copy_action(".", "/");
    action.exclude_patterns = vec!["other".into(), "*.md".into()];
    check(
        &[action.clone()],
        true,
        |d| std::fs::write(d.join("other/x"), "y").unwrap(),
        false,
    );
    check(
        &[action],
        true,
        |d| std::fs::write(d.join("a.txt"), "y").unwrap(),
        true,
    );
    let mut parents = copy_action("/", "/");
    parents.include_patterns = vec!["app/main.rs".into()];
    check(
        &[parents.clone()],
        true,
        |d| std::fs::write(d.join("app/added"), "y").unwrap(),
        false,
    );
    check(
        &[parents],
        true,
        |d| std::fs::write(d.join("app/main.rs"), "y").unwrap(),
        true,
    );
}

#[test]
fn bind_mount_paths() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), TREE);
    let source = SourceRoot::new(dir.path());
    let cache = ChecksumCache::in_memory();
    let before = checksum_path(&source, "/app", false, &cache).unwrap();
    std::fs::write(dir.path().join("other/x"), "changed").unwrap();
    assert_eq!(
        checksum_path(&source, "app", false, &cache).unwrap(),
        before
    );
    std::fs::write(dir.path().join("app/main.rs"), "changed").unwrap();
    assert_ne!(
        checksum_path(&source, "app", false, &cache).unwrap(),
        before
    );
    assert!(checksum_path(&source, "/missing", false, &cache).is_err());
}

#[test]
fn the_stat_cache_reads_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), TREE);
    // Let the files age past the racy window so their entries can be saved.
    std::thread::sleep(std::time::Duration::from_millis(250));
    let cache_dir = tempfile::tempdir().unwrap();
    let source = SourceRoot::build_context(dir.path(), &[], &[]).unwrap();
    let actions = [copy_action(".", "/"), copy_action("app", "/app/")];

    let cache = ChecksumCache::open_for_context(cache_dir.path(), "context-1").unwrap();
    let first = checksum_copy_sources(&source, actions.iter(), &cache).unwrap();
    // 5 files and one link, each read once although two COPYs take app/.
    assert_eq!(cache.files_read(), 6);
    let again = checksum_copy_sources(&source, actions.iter(), &cache).unwrap();
    assert_eq!(again, first);
    assert_eq!(cache.files_read(), 6);
    cache.save().unwrap();

    // A new build: nothing is read.
    let cache = ChecksumCache::open_for_context(cache_dir.path(), "context-1").unwrap();
    assert_eq!(
        checksum_copy_sources(&source, actions.iter(), &cache).unwrap(),
        first
    );
    assert_eq!(cache.files_read(), 0);

    // One file changed: one read.
    std::fs::write(dir.path().join("other/x"), "changed").unwrap();
    let changed = checksum_copy_sources(&source, actions.iter(), &cache).unwrap();
    assert_ne!(changed, first);
    assert_eq!(cache.files_read(), 1);

    // Saved again once the change is past the racy window: the new record replaces the
    // saved one (no second record for the path), and the next build reads nothing.
    let entries = cache.len();
    std::thread::sleep(std::time::Duration::from_millis(250));
    std::fs::write(dir.path().join("other/x"), "changed again").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(250));
    let changed_again = checksum_copy_sources(&source, actions.iter(), &cache).unwrap();
    assert_ne!(changed_again, changed);
    assert_eq!(cache.files_read(), 2);
    assert_eq!(cache.len(), entries);
    cache.save().unwrap();
    let cache = ChecksumCache::open_for_context(cache_dir.path(), "context-1").unwrap();
    assert_eq!(cache.len(), entries);
    assert_eq!(
        checksum_copy_sources(&source, actions.iter(), &cache).unwrap(),
        changed_again
    );
    assert_eq!(cache.files_read(), 0);

    // A torn cache file is ignored.
    std::fs::write(cache_dir.path().join("context-1.bin"), b"KILNCSUM garbage").unwrap();
    let cache = ChecksumCache::open_for_context(cache_dir.path(), "context-1").unwrap();
    assert!(cache.is_empty());
    assert!(ChecksumCache::open_for_context(cache_dir.path(), "../escape").is_err());
}
