//! File actions against real directories: every COPY/ADD rule and the hostile cases of
//! HOSTILE-INPUTS.md B8 (destination through a symlink) and B9 (context symlinks), each a case
//! of source tree, destination tree, actions and the expected destination listing (or error).

mod fileops_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fileops_support::{build, copy_action, dump};
use kiln_frontend::dag::op::{
    Chmod, Chown, CopyAction, FileAction, MkdirAction, MkfileAction, RmAction, SymlinkAction,
    UserOrId,
};
use kiln_worker::fileops::{apply_action, FileOpOptions, SourceRoot};

/// A test area: `source/`, `dest/` and a `victim/` next to them with a sentinel that must
/// never change.
struct Area {
    _dir: tempfile::TempDir,
    source: std::path::PathBuf,
    dest: std::path::PathBuf,
    victim: std::path::PathBuf,
}

fn area(source_spec: &str, dest_spec: &str) -> Area {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let dest = dir.path().join("dest");
    let victim = dir.path().join("victim");
    for path in [&source, &dest, &victim] {
        std::fs::create_dir(path).unwrap();
    }
    std::fs::write(victim.join("hello"), "sentinel").unwrap();
    build(&source, source_spec);
    build(&dest, dest_spec);
    Area {
        _dir: dir,
        source,
        dest,
        victim,
    }
}

/// Runs `actions` with a context source (owners reset to 0:0, `.dockerignore` read) and
/// compares the destination listing, or the error's text, with `expected`.
fn check(source_spec: &str, dest_spec: &str, actions: &[FileAction], expected: &str) {
    let area = area(source_spec, dest_spec);
    let source = SourceRoot::build_context_with_dockerignore(&area.source).unwrap();
    check_with(&area, &[source], actions, expected);
}

fn check_with(area: &Area, sources: &[SourceRoot], actions: &[FileAction], expected: &str) {
    let mut result = Ok(());
    for action in actions {
        result = apply_action(action, &area.dest, sources, &FileOpOptions::default());
        if result.is_err() {
            break;
        }
    }
    let actual = match result {
        Ok(()) => dump(&area.dest),
        Err(error) => format!("error: {}", error_chain(&error)),
    };
    let expected: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if let Some(prefix) = expected
        .first()
        .and_then(|line| line.strip_prefix("error: "))
    {
        assert!(
            actual.starts_with("error: ") && actual.contains(prefix),
            "expected an error containing {prefix:?}, got:\n{actual}"
        );
    } else {
        assert_eq!(actual, expected.join("\n"), "\n--- actual ---\n{actual}\n");
    }
    // Nothing outside the roots changed.
    let victim: Vec<_> = std::fs::read_dir(&area.victim).unwrap().collect();
    assert_eq!(victim.len(), 1);
    assert_eq!(
        std::fs::read_to_string(area.victim.join("hello")).unwrap(),
        "sentinel"
    );
    let parent: Vec<String> = std::fs::read_dir(area.dest.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        parent.len(),
        3,
        "something appeared next to the roots: {parent:?}"
    );
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn copy(source: &str, dest: &str) -> FileAction {
    FileAction::Copy(copy_action(source, dest))
}

fn copy_with(source: &str, dest: &str, edit: impl FnOnce(&mut CopyAction)) -> FileAction {
    let mut action = copy_action(source, dest);
    edit(&mut action);
    FileAction::Copy(action)
}

const CONTEXT: &str = "
    f a.txt 644 A
    f b.txt 600 B
    f run.sh 755 #!
    d dir 750
    f dir/one 644 1
    d dir/sub 755
    f dir/sub/two 644 2
";

#[test]
fn single_file_to_a_new_path() {
    check(CONTEXT, "", &[copy("a.txt", "/out")], "/out f644 0:0 A");
}

#[test]
fn trailing_slash_makes_a_directory() {
    check(
        CONTEXT,
        "",
        &[copy("a.txt", "/out/")],
        "
        /out d755 0:0
        /out/a.txt f644 0:0 A
        ",
    );
}

#[test]
fn file_into_an_existing_directory() {
    check(
        CONTEXT,
        "d out 700",
        &[copy("/a.txt", "/out")],
        "
        /out d700 0:0
        /out/a.txt f644 0:0 A
        ",
    );
}

#[test]
fn missing_parents_are_created() {
    check(
        CONTEXT,
        "",
        &[copy("a.txt", "/x/y/z")],
        "
        /x d755 0:0
        /x/y d755 0:0
        /x/y/z f644 0:0 A
        ",
    );
}

#[test]
fn missing_parent_without_create_dest_path_fails() {
    check(
        CONTEXT,
        "",
        &[copy_with("a.txt", "/x/y/z", |a| a.create_dest_path = false)],
        "error: destination parent",
    );
}

#[test]
fn directory_contents_are_copied() {
    check(
        CONTEXT,
        "",
        &[copy("dir", "/app")],
        "
        /app d755 0:0
        /app/one f644 0:0 1
        /app/sub d755 0:0
        /app/sub/two f644 0:0 2
        ",
    );
}

#[test]
fn directory_itself_is_copied_without_contents_only() {
    check(
        CONTEXT,
        "d app 755",
        &[copy_with("dir", "/app", |a| a.dir_contents_only = false)],
        "
        /app d755 0:0
        /app/dir d750 0:0
        /app/dir/one f644 0:0 1
        /app/dir/sub d755 0:0
        /app/dir/sub/two f644 0:0 2
        ",
    );
}

#[test]
fn existing_directories_merge() {
    check(
        CONTEXT,
        "
        d app 700
        f app/keep 600 K
        d app/sub 700
        f app/sub/old 600 O
        ",
        &[copy("dir/", "/app/")],
        "
        /app d700 0:0
        /app/keep f600 0:0 K
        /app/one f644 0:0 1
        /app/sub d755 0:0
        /app/sub/old f600 0:0 O
        /app/sub/two f644 0:0 2
        ",
    );
}

#[test]
fn wildcards_match_names() {
    check(
        CONTEXT,
        "",
        &[copy("*.txt", "/out/")],
        "
        /out d755 0:0
        /out/a.txt f644 0:0 A
        /out/b.txt f600 0:0 B
        ",
    );
    check(
        CONTEXT,
        "",
        &[copy("[ab].tx?", "/out/")],
        "
        /out d755 0:0
        /out/a.txt f644 0:0 A
        /out/b.txt f600 0:0 B
        ",
    );
    check(
        CONTEXT,
        "",
        &[copy("d*/s*", "/out/")],
        "
        /out d755 0:0
        /out/two f644 0:0 2
        ",
    );
}

#[test]
fn empty_wildcard_is_allowed_or_an_error() {
    check(CONTEXT, "", &[copy("*.none", "/out/")], "");
    check(
        CONTEXT,
        "",
        &[copy_with("*.none", "/out/", |a| {
            a.allow_empty_wildcard = false
        })],
        "error: matched nothing",
    );
}

#[test]
fn missing_source_is_an_error() {
    check(
        CONTEXT,
        "",
        &[copy("nope", "/out")],
        "error: \"/nope\": not found",
    );
}

#[test]
fn dockerignored_files_do_not_exist() {
    let context = "
        f .dockerignore 644 *.txt\n
        f a.txt 644 A
        f keep.md 644 K
        d logs 755
        f logs/x.log 644 X
        f logs/keep.txt 644 KT
    ";
    let area = area(context, "");
    std::fs::write(
        area.source.join(".dockerignore"),
        "*.txt\nlogs\n!logs/keep.txt",
    )
    .unwrap();
    let source = SourceRoot::build_context_with_dockerignore(&area.source).unwrap();
    check_with(
        &area,
        &[source.clone()],
        &[copy(".", "/out/")],
        "
        /out d755 0:0
        /out/.dockerignore f644 0:0 *.txt
        logs
        !logs/keep.txt
        /out/keep.md f644 0:0 K
        /out/logs d755 0:0
        /out/logs/keep.txt f644 0:0 KT
        ",
    );
    let area2 = area_with_ignore(context);
    let source2 = SourceRoot::build_context_with_dockerignore(&area2.source).unwrap();
    check_with(
        &area2,
        &[source2.clone()],
        &[copy("a.txt", "/x")],
        "error: not found",
    );
    check_with(&area2, &[source2], &[copy("*.txt", "/x/")], "");
}

fn area_with_ignore(context: &str) -> Area {
    let area = area(context, "");
    std::fs::write(
        area.source.join(".dockerignore"),
        "*.txt\nlogs\n!logs/keep.txt",
    )
    .unwrap();
    area
}

#[test]
fn chown_by_name_from_the_destination_passwd() {
    let dest = "
        f etc/passwd 644 root:x:0:0::/root:/bin/sh
        f etc/group 644 root:x:0:
    ";
    let area = area(CONTEXT, dest);
    std::fs::write(
        area.dest.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh",
    )
    .unwrap();
    std::fs::write(area.dest.join("etc/group"), "root:x:0:\nstaff:x:50:").unwrap();
    let source = SourceRoot::build_context(&area.source, &[], &[]).unwrap();
    let user = |name: &str| Some(UserOrId::Name(name.to_string()));
    let actions = [
        copy_with("a.txt", "/u/a", |a| {
            a.owner = Some(Chown {
                user: user("app"),
                group: None,
            })
        }),
        copy_with("a.txt", "/g/a", |a| {
            a.owner = Some(Chown {
                user: user("app"),
                group: user("staff"),
            })
        }),
        copy_with("a.txt", "/n/a", |a| {
            a.owner = Some(Chown {
                user: Some(UserOrId::Id(42)),
                group: None,
            })
        }),
        copy_with("dir", "/d/", |a| {
            a.owner = Some(Chown {
                user: Some(UserOrId::Id(7)),
                group: Some(UserOrId::Id(8)),
            })
        }),
    ];
    check_with(
        &area,
        &[source],
        &actions,
        "
        /d d755 7:8
        /d/one f644 7:8 1
        /d/sub d755 7:8
        /d/sub/two f644 7:8 2
        /etc d755 0:0
        /etc/group f644 0:0 root:x:0:
        staff:x:50:
        /etc/passwd f644 0:0 root:x:0:0::/root:/bin/sh
        app:x:1000:1001::/home/app:/bin/sh
        /g d755 1000:50
        /g/a f644 1000:50 A
        /n d755 42:42
        /n/a f644 42:42 A
        /u d755 1000:1001
        /u/a f644 1000:1001 A
        ",
    );
}

#[test]
fn image_sources_keep_owners_and_the_context_resets_them() {
    let spec = "
        f a 644 A
        o a 12 34
    ";
    let first = area(spec, "");
    let plain = SourceRoot::new(&first.source);
    check_with(&first, &[plain], &[copy("a", "/img")], "/img f644 12:34 A");
    let second = area(spec, "");
    let context = SourceRoot::build_context(&second.source, &[], &[]).unwrap();
    check_with(&second, &[context], &[copy("a", "/ctx")], "/ctx f644 0:0 A");
}

#[test]
fn chmod_octal_and_symbolic() {
    check(
        CONTEXT,
        "",
        &[copy_with("dir", "/o/p/", |a| {
            a.mode = Some(Chmod::Octal(0o700))
        })],
        "
        /o d700 0:0
        /o/p d700 0:0
        /o/p/one f700 0:0 1
        /o/p/sub d700 0:0
        /o/p/sub/two f700 0:0 2
        ",
    );
    check(
        CONTEXT,
        "",
        &[copy_with("dir", "/s/", |a| {
            a.mode = Some(Chmod::Symbolic("u+x,g-w,o=".to_string()))
        })],
        "
        /s d755 0:0
        /s/one f740 0:0 1
        /s/sub d750 0:0
        /s/sub/two f740 0:0 2
        ",
    );
    check(
        CONTEXT,
        "",
        &[copy_with("dir", "/x/", |a| {
            a.mode = Some(Chmod::Symbolic("a+X".to_string()))
        })],
        "
        /x d755 0:0
        /x/one f644 0:0 1
        /x/sub d755 0:0
        /x/sub/two f644 0:0 2
        ",
    );
}

#[test]
fn include_patterns_keep_parents() {
    // COPY --parents a/b/c.txt x/*.md /out/
    let context = "
        f a/b/c.txt 644 C
        f a/b/d.txt 644 D
        f x/y.md 644 Y
        f x/z.txt 644 Z
        f top 644 T
    ";
    check(
        context,
        "",
        &[
            copy_with("/", "/out/", |a| {
                a.include_patterns = vec!["a/b/c.txt".into()];
                a.required_paths = vec!["/a/b/c.txt".into()];
            }),
            copy_with("/", "/out/", |a| a.include_patterns = vec!["x/*.md".into()]),
        ],
        "
        /out d755 0:0
        /out/a d755 0:0
        /out/a/b d755 0:0
        /out/a/b/c.txt f644 0:0 C
        /out/x d755 0:0
        /out/x/y.md f644 0:0 Y
        ",
    );
    check(
        context,
        "",
        &[copy_with("/", "/out/", |a| {
            a.include_patterns = vec!["a/b/nope.txt".into()];
            a.required_paths = vec!["/a/b/nope.txt".into()];
        })],
        "error: not found",
    );
}

#[test]
fn include_patterns_take_whole_matched_directories() {
    // below `a` every include pattern's answer is known (the walk runs no pattern there);
    // below `x` the names still matter
    let context = "
        f a/b/c.txt 644 C
        f a/b/deep/d.md 644 D
        f a/e 644 E
        f x/y.md 644 Y
        f x/z.txt 644 Z
        f x/sub/w.md 644 W
        f top 644 T
    ";
    check(
        context,
        "",
        &[copy_with("/", "/out/", |a| {
            a.include_patterns = vec!["a".into(), "x/*.md".into()];
        })],
        "
        /out d755 0:0
        /out/a d755 0:0
        /out/a/b d755 0:0
        /out/a/b/c.txt f644 0:0 C
        /out/a/b/deep d755 0:0
        /out/a/b/deep/d.md f644 0:0 D
        /out/a/e f644 0:0 E
        /out/x d755 0:0
        /out/x/y.md f644 0:0 Y
        ",
    );
}

#[test]
fn exclude_patterns_skip_paths() {
    check(
        CONTEXT,
        "",
        &[copy_with(".", "/out/", |a| {
            a.exclude_patterns = vec!["*.txt".into(), "dir/sub".into()]
        })],
        "
        /out d755 0:0
        /out/dir d750 0:0
        /out/dir/one f644 0:0 1
        /out/run.sh f755 0:0 #!
        ",
    );
}

#[test]
fn file_over_directory_needs_replace() {
    check(
        CONTEXT,
        "d out/a.txt 755",
        &[copy("a.txt", "/out/a.txt/")],
        "
        /out d755 0:0
        /out/a.txt d755 0:0
        /out/a.txt/a.txt f644 0:0 A
        ",
    );
    check(
        "d src 755\nf src/a 644 A",
        "d out/a 755\nf out/a/x 644 X",
        &[copy("src", "/out")],
        "error: cannot replace to directory",
    );
    check(
        "d src 755\nf src/a 644 A",
        "d out/a 755\nf out/a/x 644 X",
        &[copy_with("src", "/out", |a| {
            a.always_replace_existing_dest_paths = true
        })],
        "
        /out d755 0:0
        /out/a f644 0:0 A
        ",
    );
    check(
        "d src/a 755\nf src/a/b 644 B",
        "d out 755\nf out/a 644 file",
        &[copy("src", "/out")],
        "error: cannot copy to non-directory",
    );
    check(
        "d src/a 755\nf src/a/b 644 B",
        "d out 755\nf out/a 644 file",
        &[copy_with("src", "/out", |a| {
            a.always_replace_existing_dest_paths = true
        })],
        "
        /out d755 0:0
        /out/a d755 0:0
        /out/a/b f644 0:0 B
        ",
    );
}

#[test]
fn symlinks_in_the_source_are_copied_as_links() {
    // HOSTILE-INPUTS B9: never followed to the host.
    check(
        "
        l foo /etc/passwd
        d sub 755
        l sub/bar ../../../etc/group
        ",
        "",
        &[copy(".", "/out/")],
        "
        /out d755 0:0
        /out/foo l 0:0 -> /etc/passwd
        /out/sub d755 0:0
        /out/sub/bar l 0:0 -> ../../../etc/group
        ",
    );
}

#[test]
fn following_a_source_link_stays_in_the_context() {
    // `COPY foo /x` follows foo -> /etc/passwd inside the context: there is none.
    check(
        "l foo /etc/passwd",
        "",
        &[copy("foo", "/x")],
        "error: not found",
    );
    check(
        "l foo /etc/passwd\nf etc/passwd 644 ctx-passwd",
        "",
        &[copy("foo", "/x")],
        "/x f644 0:0 ctx-passwd",
    );
    check(
        "d sub 755\nl sub/bar ../../../etc/group",
        "",
        &[copy("sub/bar", "/x")],
        "error: not found",
    );
    // Without following, the link itself is copied.
    check(
        "l foo /etc/passwd",
        "",
        &[copy_with("foo", "/x", |a| a.follow_symlinks = false)],
        "/x l 0:0 -> /etc/passwd",
    );
}

#[test]
fn parent_references_cannot_leave_the_context() {
    check(CONTEXT, "", &[copy("../a.txt", "/x")], "/x f644 0:0 A");
    check(
        CONTEXT,
        "",
        &[copy("../../../victim/hello", "/x")],
        "error: not found",
    );
    check(CONTEXT, "", &[copy("../*", "/x/")], "/x d755 0:0\n/x/a.txt f644 0:0 A\n/x/b.txt f600 0:0 B\n/x/one f644 0:0 1\n/x/run.sh f755 0:0 #!\n/x/sub d755 0:0\n/x/sub/two f644 0:0 2");
}

#[test]
fn destination_through_symlinks_lands_inside_the_root() {
    // HOSTILE-INPUTS B8 (BuildKit testSymlinkDestination).
    let dest = "
        d run 755
        d var 755
        l var/run /run
        d tmp/x 755
        l dst ../tmp/x
        l up ../../../../victim
        l abs /etc
    ";
    check(
        CONTEXT,
        dest,
        &[
            copy("a.txt", "/var/run/"),
            copy("b.txt", "/dst/"),
            copy("run.sh", "/up/"),
            copy("dir", "/abs/app/"),
        ],
        "
        /abs l 0:0 -> /etc
        /dst l 0:0 -> ../tmp/x
        /etc d755 0:0
        /etc/app d755 0:0
        /etc/app/one f644 0:0 1
        /etc/app/sub d755 0:0
        /etc/app/sub/two f644 0:0 2
        /run d755 0:0
        /run/a.txt f644 0:0 A
        /tmp d755 0:0
        /tmp/x d755 0:0
        /tmp/x/b.txt f600 0:0 B
        /up l 0:0 -> ../../../../victim
        /var d755 0:0
        /var/run l 0:0 -> /run
        /victim d755 0:0
        /victim/run.sh f755 0:0 #!
        ",
    );
    // A destination that is itself a link to a file path: the file lands at the target.
    check(
        CONTEXT,
        "d tmp 755\nl dst ../tmp/file",
        &[copy("a.txt", "/dst")],
        "
        /dst l 0:0 -> ../tmp/file
        /tmp d755 0:0
        /tmp/file f644 0:0 A
    ",
    );
}

#[test]
fn hardlinks_are_preserved() {
    let area = area("f a 644 same\nh b a\nf c 644 other", "");
    let source = SourceRoot::new(&area.source);
    apply_action(
        &copy(".", "/out/"),
        &area.dest,
        &[source],
        &FileOpOptions::default(),
    )
    .unwrap();
    let a = std::fs::metadata(area.dest.join("out/a")).unwrap();
    let b = std::fs::metadata(area.dest.join("out/b")).unwrap();
    let c = std::fs::metadata(area.dest.join("out/c")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_ne!(a.ino(), c.ino());
    assert_eq!(a.nlink(), 2);
}

#[test]
fn times_are_kept_or_set() {
    let area = area("f a 644 A\nd d 755\nf d/x 644 X", "");
    let old = filetime_seconds(&area.source.join("a"), 1_000_000_000);
    filetime_seconds(&area.source.join("d/x"), 1_100_000_000);
    filetime_seconds(&area.source.join("d"), 1_200_000_000);
    let source = SourceRoot::new(&area.source);
    apply_action(
        &copy("a", "/a"),
        &area.dest,
        &[source.clone()],
        &FileOpOptions::default(),
    )
    .unwrap();
    apply_action(
        &copy_with("d", "/d", |a| a.dir_contents_only = false),
        &area.dest,
        &[source.clone()],
        &FileOpOptions::default(),
    )
    .unwrap();
    assert_eq!(std::fs::metadata(area.dest.join("a")).unwrap().mtime(), old);
    assert_eq!(
        std::fs::metadata(area.dest.join("d/x")).unwrap().mtime(),
        1_100_000_000
    );
    assert_eq!(
        std::fs::metadata(area.dest.join("d")).unwrap().mtime(),
        1_200_000_000
    );
    apply_action(
        &copy_with("d", "/t/u/", |a| a.timestamp = Some(1_500_000_000)),
        &area.dest,
        &[source],
        &FileOpOptions::default(),
    )
    .unwrap();
    for path in ["t", "t/u", "t/u/x"] {
        assert_eq!(
            std::fs::symlink_metadata(area.dest.join(path))
                .unwrap()
                .mtime(),
            1_500_000_000,
            "{path}"
        );
    }
}

fn filetime_seconds(path: &Path, seconds: i64) -> i64 {
    let time = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    seconds
}

#[test]
fn xattrs_and_special_files_are_copied() {
    let area = area("f a 644 A\nx a user.note hello\np fifo 640", "");
    let source = SourceRoot::new(&area.source);
    apply_action(
        &copy(".", "/out/"),
        &area.dest,
        &[source],
        &FileOpOptions::default(),
    )
    .unwrap();
    let mut value = [0u8; 64];
    let length =
        rustix::fs::lgetxattr(area.dest.join("out/a"), "user.note", &mut value[..]).unwrap();
    assert_eq!(&value[..length], b"hello");
    let fifo = std::fs::symlink_metadata(area.dest.join("out/fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    assert_eq!(fifo.mode() & 0o7777, 0o640);
}

#[test]
fn small_actions() {
    let actions = [
        FileAction::Mkdir(MkdirAction {
            path: "/w/x/y".into(),
            mode: 0o750,
            make_parents: true,
            owner: Some(Chown {
                user: Some(UserOrId::Id(5)),
                group: None,
            }),
            timestamp: None,
        }),
        FileAction::Mkfile(MkfileAction {
            path: "/w/x/y/heredoc".into(),
            mode: 0o640,
            data: "hello".into(),
            owner: None,
            timestamp: None,
        }),
        FileAction::Symlink(SymlinkAction {
            old_path: "/w/x/y/heredoc".into(),
            new_path: "/link".into(),
            owner: None,
            timestamp: None,
        }),
        FileAction::Rm(RmAction {
            path: "/gone*".into(),
            allow_not_found: true,
            allow_wildcard: true,
        }),
        FileAction::Rm(RmAction {
            path: "/tmp/l".into(),
            allow_not_found: false,
            allow_wildcard: false,
        }),
        FileAction::Rm(RmAction {
            path: "/nothing".into(),
            allow_not_found: true,
            allow_wildcard: false,
        }),
    ];
    check(
        "",
        "f gone1 644 x\nd gone2 755\nf gone2/y 644 y\nd tmp 755\nl tmp/l /etc\nd etc 755\nf etc/k 644 keep",
        &actions,
        "
        /etc d755 0:0
        /etc/k f644 0:0 keep
        /link l 0:0 -> /w/x/y/heredoc
        /tmp d755 0:0
        /w d750 5:5
        /w/x d750 5:5
        /w/x/y d750 5:5
        /w/x/y/heredoc f640 0:0 hello
        ",
    );
    check(
        "",
        "",
        &[FileAction::Rm(RmAction {
            path: "/nothing".into(),
            allow_not_found: false,
            allow_wildcard: false,
        })],
        "error: not found",
    );
    check(
        "",
        "",
        &[FileAction::Rm(RmAction {
            path: "/..".into(),
            allow_not_found: true,
            allow_wildcard: false,
        })],
        "error: cannot remove the root",
    );
    // Writes through destination links stay inside.
    check(
        "",
        "l etc /../../victim\nd victim 755",
        &[FileAction::Mkfile(MkfileAction {
            path: "/etc/hello".into(),
            mode: 0o644,
            data: "x".into(),
            owner: None,
            timestamp: None,
        })],
        "
        /etc l 0:0 -> /../../victim
        /victim d755 0:0
        /victim/hello f644 0:0 x
        ",
    );
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn copy_into_an_overlay_mount_lands_in_the_upper_dir() {
    let dir = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|name| {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).unwrap();
        path
    });
    build(
        &lower,
        "d var 755\nl var/run /run\nd run 755\nf etc/passwd 644 root:x:0:0::/:/bin/sh",
    );
    let source_dir = dir.path().join("context");
    build(
        &source_dir,
        "f big 644 0123456789\nd sub 755\nf sub/small 600 s",
    );
    std::fs::write(source_dir.join("big"), vec![7u8; 3 << 20]).unwrap();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let c = |text: &str| std::ffi::CString::new(text).unwrap();
    let target = c(merged.to_str().unwrap());
    let data = c(&options);
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let status = unsafe {
        libc::mount(
            c("overlay").as_ptr(),
            target.as_ptr(),
            c("overlay").as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(status, 0, "{}", std::io::Error::last_os_error());
    let _guard = Unmount(merged.clone());
    let source = SourceRoot::build_context(&source_dir, &[], &[]).unwrap();
    for action in [copy(".", "/var/run/app/"), copy("big", "/etc/")] {
        apply_action(
            &action,
            &merged,
            std::slice::from_ref(&source),
            &FileOpOptions::default(),
        )
        .unwrap();
    }
    assert_eq!(
        std::fs::read(upper.join("run/app/big")).unwrap(),
        vec![7u8; 3 << 20]
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("run/app/sub/small")).unwrap(),
        "s"
    );
    assert_eq!(
        std::fs::metadata(upper.join("etc/big")).unwrap().len(),
        3 << 20
    );
    assert!(
        !upper.join("var/run").exists()
            || std::fs::symlink_metadata(upper.join("var/run"))
                .unwrap()
                .file_type()
                .is_symlink()
    );
}

/// Every mode arrives exactly, whether the file can be created with it directly (no set-id
/// bit, nothing the umask takes) or needs the chmod after the chown: group- and world-writable
/// modes, set-id bits (kept through a chown to another user), no permissions at all.
#[test]
fn file_modes_arrive_exactly_whichever_way_they_are_set() {
    let area = area(
        "f plain 644 p\nf open 666 o\nf shared 775 s\nf suid 4755 u\nf sgid 2711 g\nf sticky 1644 t\nf none 000 n\nf private 600 v",
        "",
    );
    let source = SourceRoot::build_context(&area.source, &[], &[]).unwrap();
    for (dest, owner) in [("/root-owned/", None), ("/user-owned/", Some(1234))] {
        let action = copy_with(".", dest, |a| {
            a.owner = owner.map(|id| Chown {
                user: Some(UserOrId::Id(id)),
                group: Some(UserOrId::Id(id)),
            })
        });
        apply_action(
            &action,
            &area.dest,
            &[source.clone()],
            &FileOpOptions::default(),
        )
        .unwrap();
        for (name, mode) in [
            ("plain", 0o644),
            ("open", 0o666),
            ("shared", 0o775),
            ("suid", 0o4755),
            ("sgid", 0o2711),
            ("sticky", 0o1644),
            ("none", 0o000),
            ("private", 0o600),
        ] {
            let path = area.dest.join(dest.trim_matches('/')).join(name);
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(metadata.mode() & 0o7777, mode, "{}", path.display());
            assert_eq!(metadata.uid(), owner.unwrap_or(0), "{}", path.display());
        }
    }
}
