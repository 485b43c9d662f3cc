//! The layer cache seen from outside: `kiln build --progress json` twice on one store, with
//! an edit in between, and the steps that ran or came from the cache compared with what
//! BuildKit would do.

mod support;

use std::path::Path;

use support::{busybox_with_marker, context, write, Registry, Root};

const TWO_STAGES: &str = r#"ARG REGISTRY
FROM ${REGISTRY}/busybox:latest AS other
COPY other.txt /other
RUN cat /other > /other-copy

FROM ${REGISTRY}/busybox:latest
RUN echo before > /before
COPY a.txt /a
RUN cat /a > /a-copy
COPY b.txt /b
RUN echo after > /after
COPY --from=other /other-copy /from-other
"#;

fn two_stage_context() -> tempfile::TempDir {
    context(&[
        ("Dockerfile", TWO_STAGES),
        ("a.txt", "a1\n"),
        ("b.txt", "b1\n"),
        ("other.txt", "other1\n"),
        ("unused.txt", "unused1\n"),
    ])
}

fn build(root: &Root, registry: &Registry, context: &Path, extra: &[&str]) -> support::Build {
    let mut args = vec!["-t", "cache-test:latest"];
    args.extend_from_slice(extra);
    let build = root.build(registry.address(), context, &args);
    build.assert_success();
    build
}

fn cat(root: &Root, path: &str) -> String {
    let output = root.run_shell("cache-test:latest", &format!("cat {path}"));
    assert!(output.status.success(), "{}", support::describe(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn rebuild_is_fully_cached_with_the_same_image_id() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = two_stage_context();
    let first = build(&root, &registry, context.path(), &[]);
    // One FROM (both stages share the image source) and eight instructions.
    assert_eq!(first.ran_instructions().len(), 9, "{:?}", first.ran());
    let first_id = root.image_digest("cache-test:latest");

    let second = build(&root, &registry, context.path(), &[]);
    assert!(
        second.ran_instructions().is_empty(),
        "ran again: {:?}",
        second.ran_instructions()
    );
    // The last step comes from the cache (and nothing below it needs loading); every step
    // is shown as CACHED all the same, as BuildKit does.
    assert!(
        second.cached_step("COPY --from=other"),
        "{:?}",
        second.cached()
    );
    for step in first.ran_instructions() {
        assert!(
            second.cached().contains(&step),
            "{step} not shown as cached: {:?}",
            second.cached()
        );
    }
    assert_eq!(root.image_digest("cache-test:latest"), first_id);
    root.assert_clean();
}

#[test]
fn editing_a_copied_file_invalidates_from_that_copy_down_only() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = two_stage_context();
    build(&root, &registry, context.path(), &[]);

    write(context.path(), "a.txt", "a2\n");
    let second = build(&root, &registry, context.path(), &[]);
    let ran = second.ran_instructions();
    for step in [
        "COPY a.txt /a",
        "RUN cat /a > /a-copy",
        "COPY b.txt /b",
        "RUN echo after",
        "COPY --from=other",
    ] {
        assert!(
            ran.iter().any(|name| name.contains(step)),
            "{step} did not run: {ran:?}"
        );
    }
    for step in ["RUN echo before", "COPY other.txt", "RUN cat /other"] {
        assert!(!second.ran_step(step), "{step} ran: {ran:?}");
    }
    // The results used come from the cache (steps below a cached one are not even loaded).
    assert!(second.cached_step("RUN echo before"), "{ran:?}");
    assert!(second.cached_step("RUN cat /other"), "{ran:?}");
    assert_eq!(cat(&root, "/a-copy"), "a2\n");
    root.assert_clean();
}

#[test]
fn ignored_unused_or_touched_files_invalidate_nothing() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = context(&[
        (
            "Dockerfile",
            "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nCOPY . /ctx/\nRUN ls /ctx > /listing\n",
        ),
        (".dockerignore", "ignored.txt\nDockerfile\n"),
        ("kept.txt", "kept\n"),
        ("ignored.txt", "ignored1\n"),
    ]);
    build(&root, &registry, context.path(), &[]);

    write(context.path(), "ignored.txt", "ignored2\n");
    let after_ignored = build(&root, &registry, context.path(), &[]);
    assert!(
        after_ignored.ran_instructions().is_empty(),
        "editing an ignored file reran {:?}",
        after_ignored.ran_instructions()
    );

    // Same content, new mtime: the content checksum does not change.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(context.path(), "kept.txt", "kept\n");
    let after_touch = build(&root, &registry, context.path(), &[]);
    assert!(
        after_touch.ran_instructions().is_empty(),
        "rewriting a file with the same content reran {:?}",
        after_touch.ran_instructions()
    );

    // A file no instruction reads (another Dockerfile copying one file).
    let narrow = support::context(&[
        (
            "Dockerfile",
            "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nCOPY used.txt /used\n",
        ),
        ("used.txt", "used\n"),
        ("unused.txt", "unused1\n"),
    ]);
    build(&root, &registry, narrow.path(), &[]);
    write(narrow.path(), "unused.txt", "unused2\n");
    let after_unused = build(&root, &registry, narrow.path(), &[]);
    assert!(
        after_unused.ran_instructions().is_empty(),
        "editing an unused file reran {:?}",
        after_unused.ran_instructions()
    );
    root.assert_clean();
}

#[test]
fn changed_build_arg_invalidates_from_its_first_use() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = context(&[(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nRUN echo one > /one\nARG VERSION=1\nCOPY Dockerfile /copied\nRUN echo \"$VERSION\" > /version\nRUN echo three > /three\n",
    )]);
    build(
        &root,
        &registry,
        context.path(),
        &["--build-arg", "VERSION=1"],
    );
    let same = build(
        &root,
        &registry,
        context.path(),
        &["--build-arg", "VERSION=1"],
    );
    assert!(same.ran_instructions().is_empty(), "{:?}", same.ran());

    let changed = build(
        &root,
        &registry,
        context.path(),
        &["--build-arg", "VERSION=2"],
    );
    assert!(!changed.ran_step("RUN echo one"), "{:?}", changed.ran());
    // A COPY does not see build args: it stays cached.
    assert!(
        changed.cached_step("COPY Dockerfile /copied"),
        "{:?}",
        changed.ran()
    );
    // Every RUN after the ARG has it in its environment (as BuildKit), so both rerun.
    assert!(changed.ran_step("> /version"), "{:?}", changed.ran());
    assert!(changed.ran_step("RUN echo three"), "{:?}", changed.ran());
    assert_eq!(cat(&root, "/version"), "2\n");
    root.assert_clean();
}

#[test]
fn new_base_digest_invalidates_the_stage_but_not_link_layers() {
    let registry = Registry::with_busybox();
    // A second image name for a stage whose base does not change.
    registry.push(&kiln_testsupport::busybox_image(), "stable:latest");
    let root = Root::new();
    let context = context(&[
        (
            "Dockerfile",
            "ARG REGISTRY\nFROM ${REGISTRY}/stable:latest AS steady\nRUN echo steady > /steady\n\nFROM ${REGISTRY}/busybox:latest\nCOPY --link linked.txt /linked\nCOPY plain.txt /plain\nRUN cat /linked /plain > /both\nCOPY --from=steady /steady /steady\n",
        ),
        ("linked.txt", "linked\n"),
        ("plain.txt", "plain\n"),
    ]);
    build(&root, &registry, context.path(), &[]);

    registry.push(&busybox_with_marker("new base\n"), "busybox:latest");
    // Without --pull the stored base is used: nothing changes.
    let stored = build(&root, &registry, context.path(), &[]);
    assert!(stored.ran_instructions().is_empty(), "{:?}", stored.ran());
    let listing = root.run_shell("cache-test:latest", "ls /");
    assert!(!String::from_utf8_lossy(&listing.stdout).contains("base-marker"));

    let pulled = build(&root, &registry, context.path(), &["--pull"]);
    let ran = pulled.ran_instructions();
    assert!(
        pulled.cached_step("COPY --link linked.txt /linked"),
        "the --link layer must survive a base change: ran {ran:?}"
    );
    assert!(pulled.ran_step("COPY plain.txt /plain"), "{ran:?}");
    assert!(pulled.ran_step("RUN cat /linked /plain"), "{ran:?}");
    assert!(pulled.cached_step("RUN echo steady"), "{ran:?}");
    assert_eq!(cat(&root, "/base-marker"), "new base\n");
    assert_eq!(cat(&root, "/both"), "linked\nplain\n");
    root.assert_clean();
}

#[test]
fn no_cache_reruns_everything() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = two_stage_context();
    let first = build(&root, &registry, context.path(), &[]);
    let again = build(&root, &registry, context.path(), &["--no-cache"]);
    assert_eq!(again.ran_instructions(), first.ran_instructions());
    assert!(
        again
            .cached()
            .iter()
            .all(|name| !name.starts_with('[') || name.starts_with("[internal]")),
        "cached with --no-cache: {:?}",
        again.cached()
    );
    // --no-cache-filter reruns only that stage.
    let filtered = build(
        &root,
        &registry,
        context.path(),
        &["--no-cache-filter", "other"],
    );
    assert!(filtered.ran_step("RUN cat /other"), "{:?}", filtered.ran());
    assert!(
        !filtered.ran_step("RUN echo before"),
        "{:?}",
        filtered.ran()
    );
    // The rerun stage made the same file: the COPY --from of it is still cached.
    assert!(
        filtered.cached_step("COPY --from=other"),
        "{:?}",
        filtered.ran()
    );
    root.assert_clean();
}

const EXPLAIN_DOCKERFILE: &str = "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nARG MODE=debug\nCOPY a.txt /a\nRUN echo \"$MODE\" > /mode\n";

#[test]
fn explain_cache_names_the_changed_file_input() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = context(&[("Dockerfile", EXPLAIN_DOCKERFILE), ("a.txt", "a1\n")]);
    build(&root, &registry, context.path(), &["--explain-cache"]);

    write(context.path(), "a.txt", "a2\n");
    let edited = build(&root, &registry, context.path(), &["--explain-cache"]);
    let text = edited.human_stderr();
    let copy_line = explanation(&text, "COPY a.txt /a");
    assert!(
        copy_line.contains("changed") && copy_line.contains("context"),
        "the COPY's explanation should say the context files changed:\n{text}"
    );
    let run_line = explanation(&text, "> /mode");
    assert!(
        run_line.contains("changed") && run_line.contains("COPY a.txt"),
        "the RUN's explanation should name its changed input, the COPY:\n{text}"
    );
    root.assert_clean();
}

#[test]
fn explain_cache_names_the_changed_build_arg() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = context(&[("Dockerfile", EXPLAIN_DOCKERFILE), ("a.txt", "a1\n")]);
    build(&root, &registry, context.path(), &["--explain-cache"]);
    let rearg = build(
        &root,
        &registry,
        context.path(),
        &["--explain-cache", "--build-arg", "MODE=release"],
    );
    let text = rearg.human_stderr();
    let run_line = explanation(&text, "> /mode");
    assert!(
        run_line.contains("MODE"),
        "the RUN's explanation should name the changed build arg MODE:\n{text}"
    );
    assert!(rearg.cached_step("COPY a.txt /a"));
    root.assert_clean();
}

/// The lines of the `cache explanation:` section about a step.
fn explanation(stderr: &str, step: &str) -> String {
    let section = stderr
        .split_once("cache explanation:")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no cache explanation in:\n{stderr}"));
    let lines: Vec<&str> = section.lines().filter(|line| line.contains(step)).collect();
    assert!(!lines.is_empty(), "no explanation for {step}:\n{section}");
    lines.join("\n")
}

#[test]
fn cache_mounts_persist_across_builds_but_stay_out_of_the_image() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let dockerfile = "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nARG RUN_ID\nRUN --mount=type=cache,target=/var/cache/app echo \"$RUN_ID\" >> /var/cache/app/log && cp /var/cache/app/log /seen\n";
    let context = context(&[("Dockerfile", dockerfile)]);
    for run_id in ["one", "two", "three"] {
        build(
            &root,
            &registry,
            context.path(),
            &["--build-arg", &format!("RUN_ID={run_id}")],
        );
    }
    assert_eq!(cat(&root, "/seen"), "one\ntwo\nthree\n");
    let listing = root.run_shell("cache-test:latest", "ls -A /var/cache/app | wc -l");
    assert_eq!(String::from_utf8_lossy(&listing.stdout).trim(), "0");
    root.assert_clean();
}

/// Builds `parent:1` (with ONBUILD triggers) and then, with the registry gone, a child
/// `FROM parent:1` from the store; returns the root.
fn build_parent_then_child() -> Root {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let parent = context(&[(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nRUN echo parent > /parent\nONBUILD COPY child.txt /from-child-context\nONBUILD RUN echo triggered > /triggered\n",
    )]);
    root.build(registry.address(), parent.path(), &["-t", "parent:1"])
        .assert_success();
    // The registry is gone: the base must come from the store.
    drop(registry);
    let child = context(&[
        (
            "Dockerfile",
            "FROM parent:1\nRUN cat /parent /from-child-context /triggered > /all\n",
        ),
        ("child.txt", "child\n"),
    ]);
    root.build("unused", child.path(), &["-t", "cache-test:latest"])
        .assert_success();
    root
}

#[test]
fn a_built_image_is_a_base_from_the_store_and_runs_its_onbuild_triggers() {
    let root = build_parent_then_child();
    assert_eq!(cat(&root, "/all"), "parent\nchild\ntriggered\n");
    root.assert_clean();
}

#[test]
fn onbuild_triggers_of_a_base_image_are_not_inherited_by_the_child() {
    let root = build_parent_then_child();
    let config = root.image_config("cache-test:latest");
    assert!(
        config["config"]["OnBuild"].is_null(),
        "the child's config keeps the triggers: {}",
        config["config"]
    );
}

#[test]
fn editing_the_dockerfile_reruns_from_the_changed_instruction() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let original = "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nRUN echo one > /one\nRUN echo two > /two\nRUN echo three > /three\n";
    let context = context(&[("Dockerfile", original)]);
    build(&root, &registry, context.path(), &[]);

    // Comments and blank lines change nothing.
    let commented = original.replace("RUN echo two", "# a comment\n\nRUN echo two");
    write(context.path(), "Dockerfile", &commented);
    let after_comment = build(&root, &registry, context.path(), &[]);
    assert!(
        after_comment.ran_instructions().is_empty(),
        "{:?}",
        after_comment.ran()
    );

    let edited = commented.replace("echo two", "echo TWO");
    write(context.path(), "Dockerfile", &edited);
    let after_edit = build(&root, &registry, context.path(), &[]);
    assert!(
        !after_edit.ran_step("RUN echo one"),
        "{:?}",
        after_edit.ran()
    );
    assert!(
        after_edit.ran_step("RUN echo TWO"),
        "{:?}",
        after_edit.ran()
    );
    assert!(
        after_edit.ran_step("RUN echo three"),
        "{:?}",
        after_edit.ran()
    );
    assert_eq!(cat(&root, "/two"), "TWO\n");
    root.assert_clean();
}
