//! Digest stability: the same input gives the same digests every time, and editing one stage
//! leaves the digests of stages that do not depend on it unchanged.

use std::collections::HashSet;

use kiln_frontend::convert::{convert, ConvertOptions, ConvertResult};
use kiln_frontend::dag::{Definition, OpKind};
use kiln_frontend::resolver::OfflineResolver;
use kiln_types::{Digest, Platform};

fn run(text: &str, args: &[(&str, &str)], target: Option<&str>) -> ConvertResult {
    let resolver = OfflineResolver;
    let mut options = ConvertOptions::new(&resolver);
    options.build_platform = Some(Platform::parse("linux/amd64").unwrap());
    options.target = target.map(str::to_string);
    for (key, value) in args {
        options
            .build_args
            .insert(key.to_string(), value.to_string());
    }
    convert(text, "Dockerfile", &options).unwrap()
}

fn digests(definition: &Definition) -> Vec<Digest> {
    definition
        .vertices()
        .iter()
        .map(|vertex| vertex.digest.clone())
        .collect()
}

/// The digests of every op a stage's output depends on.
fn stage_closure(result: &ConvertResult, name: &str) -> HashSet<Digest> {
    let stage = result
        .stages
        .iter()
        .find(|stage| stage.name.as_deref() == Some(name))
        .unwrap();
    digests(
        &result
            .definition
            .reachable_from(std::slice::from_ref(&stage.output)),
    )
    .into_iter()
    .collect()
}

const MULTI: &str = "FROM alpine AS deps\nRUN apk add git\nCOPY go.mod /src/\n\nFROM alpine AS tools\nRUN apk add make\n\nFROM deps AS build\nCOPY --from=tools /usr/bin/make /usr/bin/make\nRUN make\n\nFROM scratch\nCOPY --from=build /out /\n";

#[test]
fn same_input_same_digests() {
    let first = run(MULTI, &[], None);
    for _ in 0..3 {
        let again = run(MULTI, &[], None);
        assert_eq!(digests(&first.definition), digests(&again.definition));
        assert_eq!(first.target, again.target);
    }
}

#[test]
fn editing_one_stage_keeps_independent_stages() {
    let before = run(MULTI, &[], None);
    let edited = MULTI.replace("RUN apk add make", "RUN apk add make cmake");
    let after = run(&edited, &[], None);
    assert_eq!(
        stage_closure(&before, "deps"),
        stage_closure(&after, "deps")
    );
    assert_ne!(
        stage_closure(&before, "tools"),
        stage_closure(&after, "tools")
    );
    assert_ne!(before.target, after.target);
    // Adding a COPY of another file to one stage leaves the other stage's context source alone.
    let more_context = MULTI.replace("RUN make\n", "COPY Makefile /src/\nRUN make\n");
    let after = run(&more_context, &[], None);
    assert_eq!(
        stage_closure(&before, "deps"),
        stage_closure(&after, "deps")
    );
}

#[test]
fn proxy_build_args_do_not_change_digests() {
    let text = "FROM alpine\nRUN wget example.com\n";
    let plain = run(text, &[], None);
    let proxied = run(
        text,
        &[
            ("HTTP_PROXY", "http://proxy:3128"),
            ("no_proxy", "localhost"),
        ],
        None,
    );
    assert_eq!(digests(&plain.definition), digests(&proxied.definition));
    let exec = proxied
        .definition
        .vertices()
        .iter()
        .find_map(|vertex| match &vertex.op.kind {
            OpKind::Exec(exec) => Some(exec.clone()),
            _ => None,
        });
    assert_eq!(
        exec.unwrap().proxy_env,
        vec!["HTTP_PROXY=http://proxy:3128", "no_proxy=localhost"]
    );
    // Declared with ARG, a proxy is an ordinary build arg and does change the digest.
    let declared = "FROM alpine\nARG HTTP_PROXY\nRUN wget example.com\n";
    assert_ne!(
        digests(&run(declared, &[], None).definition),
        digests(&run(declared, &[("HTTP_PROXY", "http://proxy:3128")], None).definition)
    );
}

#[test]
fn unused_build_arg_changes_nothing_and_used_one_does() {
    let text = "FROM alpine\nARG USED=1\nRUN echo $USED\n";
    let base = run(text, &[], None);
    assert_eq!(
        digests(&base.definition),
        digests(&run(text, &[("UNUSED", "x")], None).definition)
    );
    assert_ne!(base.target, run(text, &[("USED", "2")], None).target);
}

#[test]
fn target_output_is_the_same_op_as_in_the_full_build() {
    let full = run(MULTI, &[], None);
    let only_tools = run(MULTI, &[], Some("tools"));
    let tools = full
        .stages
        .iter()
        .find(|stage| stage.name.as_deref() == Some("tools"))
        .unwrap();
    assert_eq!(only_tools.target, tools.output);
    assert!(only_tools.definition.len() < full.definition.len());
}
