//! Conversion options beyond the Dockerfile: `--no-cache-filter` (ops of the named stages do
//! not use the cache) and the stage each op belongs to.

use kiln_frontend::convert::{convert, ConvertOptions, ConvertResult};
use kiln_frontend::dag::{OpKind, SourceOp, Vertex};
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
