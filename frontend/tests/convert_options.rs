//! Conversion options beyond the Dockerfile: `--no-cache-filter` (ops of the named stages do
//! not use the cache), the stage each op belongs to, and `SOURCE_DATE_EPOCH`.

use kiln_frontend::convert::{convert, ConvertOptions, ConvertResult};
use kiln_frontend::dag::{FileAction, OpKind, SourceOp, Vertex};
use kiln_frontend::resolver::OfflineResolver;
use kiln_types::Platform;

/// Converts `text` with the options `configure` sets.
fn check(text: &str, configure: impl FnOnce(&mut ConvertOptions<'_>)) -> ConvertResult {
    let resolver = OfflineResolver;
    let mut options = ConvertOptions::new(&resolver);
    options.build_platform = Some(Platform::parse("linux/amd64").unwrap());
    configure(&mut options);
    convert(text, "Dockerfile", &options).unwrap_or_else(|error| panic!("{error}"))
}

/// The ops made by instructions of a stage (its base image aside).
fn stage_ops<'r>(result: &'r ConvertResult, stage: &str) -> Vec<&'r Vertex> {
    result
        .definition
        .vertices()
        .iter()
        .filter(|vertex| vertex.metadata.stage.as_deref() == Some(stage))
        .filter(|vertex| !matches!(vertex.op.kind, OpKind::Source(SourceOp::Image(_))))
        .collect()
}

fn is_context(vertex: &Vertex) -> bool {
    matches!(vertex.op.kind, OpKind::Source(SourceOp::Local(_)))
}

const STAGES: &str = "\
FROM alpine AS deps
RUN apk add git
WORKDIR /src
COPY go.mod ./

FROM alpine AS tools
RUN apk add make
ADD https://example.com/tool.tar.gz /opt/
ADD https://github.com/example/repo.git#v1 /repo

FROM deps
COPY --from=tools /usr/bin/make /usr/bin/make
COPY --link <<EOF /etc/motd
hello
EOF
RUN --mount=type=cache,target=/cache,uid=1000 make
";

#[test]
fn every_op_of_a_stage_names_its_stage() {
    let result = check(STAGES, |_| {});
    for vertex in result.definition.vertices() {
        let is_base_image = matches!(vertex.op.kind, OpKind::Source(SourceOp::Image(_)));
        if is_context(vertex) {
            assert_eq!(vertex.metadata.stage, None, "{}", vertex.metadata.name);
            continue;
        }
        let stage = vertex.metadata.stage.as_deref();
        assert!(
            stage.is_some(),
            "op without a stage: {} {:?}",
            vertex.metadata.name,
            vertex.op.kind
        );
        if !is_base_image {
            assert!(vertex.metadata.lines.is_some(), "{}", vertex.metadata.name);
        }
    }
    assert_eq!(stage_ops(&result, "deps").len(), 3, "RUN, WORKDIR, COPY");
    // RUN, the http and git sources and the two ADD file ops.
    assert_eq!(stage_ops(&result, "tools").len(), 5);
    assert!(result
        .definition
        .vertices()
        .iter()
        .all(|vertex| !vertex.metadata.ignore_cache));
}

#[test]
fn no_cache_filter_marks_the_named_stage_only() {
    let result = check(STAGES, |options| {
        options.no_cache_filter = vec!["TOOLS".to_string()];
    });
    let tools = stage_ops(&result, "tools");
    assert!(!tools.is_empty());
    for vertex in &tools {
        assert!(vertex.metadata.ignore_cache, "{}", vertex.metadata.name);
    }
    for vertex in result.definition.vertices() {
        if vertex.metadata.stage.as_deref() != Some("tools") {
            assert!(!vertex.metadata.ignore_cache, "{}", vertex.metadata.name);
        }
    }
    // The base image is not the stage's own work.
    assert!(result
        .definition
        .vertices()
        .iter()
        .filter(|vertex| matches!(vertex.op.kind, OpKind::Source(SourceOp::Image(_))))
        .all(|vertex| !vertex.metadata.ignore_cache));
}

#[test]
fn no_cache_filter_by_index_reaches_unnamed_stages() {
    let result = check(STAGES, |options| {
        options.no_cache_filter = vec!["2".to_string()];
    });
    let last = stage_ops(&result, "stage-2");
    assert_eq!(
        last.len(),
        6,
        "two COPYs (one linked: file op and merge), heredoc, RUN, cache permissions"
    );
    assert!(last.iter().all(|vertex| vertex.metadata.ignore_cache));
    assert!(stage_ops(&result, "deps")
        .iter()
        .all(|vertex| !vertex.metadata.ignore_cache));
    let unknown = check(STAGES, |options| {
        options.no_cache_filter = vec!["nosuchstage".to_string(), "7".to_string()];
    });
    assert!(unknown
        .definition
        .vertices()
        .iter()
        .all(|vertex| !vertex.metadata.ignore_cache));
}

#[test]
fn an_op_shared_with_a_filtered_stage_does_not_use_the_cache() {
    // Both stages run the same first RUN: one op, added by `a` first, named after `a`.
    let text = "FROM alpine AS a\nRUN apk add git\n\nFROM alpine AS b\nRUN apk add git\nRUN make\n";
    let result = check(text, |options| {
        options.target = Some("b".into());
        options.no_cache_filter = vec!["b".to_string()];
    });
    let runs: Vec<&Vertex> = result
        .definition
        .vertices()
        .iter()
        .filter(|vertex| matches!(vertex.op.kind, OpKind::Exec(_)))
        .collect();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|vertex| vertex.metadata.ignore_cache));
}

/// The file actions of the definition with their timestamps: (kind, timestamp).
fn action_times(result: &ConvertResult) -> Vec<(&'static str, Option<i64>)> {
    let mut times = Vec::new();
    for vertex in result.definition.vertices() {
        let OpKind::File(file) = &vertex.op.kind else {
            continue;
        };
        for action in &file.actions {
            times.push(match action {
                FileAction::Copy(copy) => ("copy", copy.timestamp),
                FileAction::Mkdir(mkdir) => ("mkdir", mkdir.timestamp),
                FileAction::Mkfile(mkfile) => ("mkfile", mkfile.timestamp),
                _ => ("other", None),
            });
        }
    }
    times
}

const EPOCH_FILE: &str =
    "FROM alpine\nWORKDIR /app\nCOPY . .\nCOPY <<EOF /etc/motd\nhi\nEOF\nUSER 1000\n";

#[test]
fn source_date_epoch_sets_history_and_created_files() {
    let result = check(EPOCH_FILE, |options| {
        options.source_date_epoch = Some(1_700_000_000)
    });
    assert_eq!(result.source_date_epoch, Some(1_700_000_000));
    let history = &result.target_stage().image.history;
    assert_eq!(history.len(), 4);
    for entry in history {
        assert_eq!(entry.created.as_deref(), Some("2023-11-14T22:13:20Z"));
    }
    assert_eq!(
        action_times(&result),
        vec![
            ("mkdir", Some(1_700_000_000)),
            // Copied files keep their own times, as in BuildKit (the exporter clamps them).
            ("copy", None),
            ("mkfile", Some(1_700_000_000)),
            ("copy", None),
        ]
    );

    let without = check(EPOCH_FILE, |_| {});
    assert_eq!(without.source_date_epoch, None);
    assert!(without
        .target_stage()
        .image
        .history
        .iter()
        .all(|entry| entry.created.is_none()));
    assert!(action_times(&without)
        .iter()
        .all(|(_, time)| time.is_none()));
    assert_ne!(
        without.target, result.target,
        "the epoch is part of the digests"
    );
}

#[test]
fn source_date_epoch_build_arg_wins_over_the_option_and_the_global_arg() {
    let text = format!("ARG SOURCE_DATE_EPOCH=5\n{EPOCH_FILE}");
    let from_arg = check(&text, |_| {});
    assert_eq!(from_arg.source_date_epoch, Some(5));
    let from_option = check(&text, |options| options.source_date_epoch = Some(7));
    assert_eq!(from_option.source_date_epoch, Some(7));
    let from_build_arg = check(&text, |options| {
        options.source_date_epoch = Some(7);
        options
            .build_args
            .insert("SOURCE_DATE_EPOCH".into(), "1700000000".into());
    });
    assert_eq!(from_build_arg.source_date_epoch, Some(1_700_000_000));
    let cleared = check(&text, |options| {
        options
            .build_args
            .insert("SOURCE_DATE_EPOCH".into(), String::new());
    });
    assert_eq!(cleared.source_date_epoch, None);
}

#[test]
fn source_date_epoch_must_be_a_number() {
    let resolver = OfflineResolver;
    let mut options = ConvertOptions::new(&resolver);
    options
        .build_args
        .insert("SOURCE_DATE_EPOCH".into(), "1.5".into());
    let error = convert(EPOCH_FILE, "Dockerfile", &options).expect_err("not a number");
    assert!(
        error.message.contains("invalid SOURCE_DATE_EPOCH: 1.5"),
        "{error}"
    );
}

#[test]
fn progress_names_count_the_stage_steps() {
    let mut text = String::from("FROM alpine AS a\nRUN true\nFROM alpine:3.20 AS b\n");
    for step in 0..10 {
        text.push_str(&format!("RUN echo {step}\n"));
    }
    let result = check(&text, |options| options.target = Some("b".into()));
    let names: Vec<&str> = result
        .definition
        .vertices()
        .iter()
        .map(|vertex| vertex.metadata.name.as_str())
        .collect();
    assert_eq!(
        names.first(),
        Some(&"[b  1/11] FROM docker.io/library/alpine:3.20")
    );
    assert_eq!(names.get(1), Some(&"[b  2/11] RUN echo 0"));
    assert_eq!(names.last(), Some(&"[b 11/11] RUN echo 9"));
    let single = check("FROM alpine\nENV X=1\nRUN echo $X\n", |_| {});
    let names: Vec<&str> = single
        .definition
        .vertices()
        .iter()
        .map(|vertex| vertex.metadata.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "[1/2] FROM docker.io/library/alpine:latest",
            "[2/2] RUN echo 1"
        ]
    );
}
