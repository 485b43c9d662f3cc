//! ONBUILD triggers are consumed by the stage that runs them, as in BuildKit: a child of an
//! image with triggers runs them and its config's `OnBuild` lists only the child's own ONBUILD
//! instructions; a stage based on a stage runs that stage's ONBUILD instructions and does not
//! inherit them either.

use kiln_frontend::convert::{convert, ConvertOptions, ConvertResult};
use kiln_frontend::dag::{ExecOp, OpKind};
use kiln_frontend::resolver::MapResolver;
use kiln_types::{Digest, ImageConfig, ImageSpec, Platform, RootFs};

/// A base image (`example/parent`) whose config holds two triggers.
fn resolver() -> MapResolver {
    let parent = ImageSpec {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: ImageConfig {
            env: Some(vec!["PATH=/usr/bin:/bin".into()]),
            on_build: Some(vec![
                "RUN echo parent-trigger-1".into(),
                "RUN echo parent-trigger-2".into(),
            ]),
            ..ImageConfig::default()
        },
        rootfs: RootFs::layers(vec![Digest::of_bytes(b"parent layer")]),
        ..ImageSpec::default()
    };
    MapResolver::new().with("example/parent", parent)
}

fn check(text: &str, target: Option<&str>) -> ConvertResult {
    let resolver = resolver();
    let mut options = ConvertOptions::new(&resolver);
    options.build_platform = Some(Platform::parse("linux/amd64").unwrap());
    options.target = target.map(str::to_string);
    convert(text, "Dockerfile", &options).unwrap_or_else(|error| panic!("{error}"))
}

/// The shell commands of the exec ops, in order.
fn run_commands(result: &ConvertResult) -> Vec<String> {
    result
        .definition
        .vertices()
        .iter()
        .filter_map(|vertex| match &vertex.op.kind {
            OpKind::Exec(ExecOp { args, .. }) => args.last().cloned(),
            _ => None,
        })
        .collect()
}

fn on_build(result: &ConvertResult, stage: usize) -> Option<Vec<String>> {
    let stage = result
        .stages
        .iter()
        .find(|converted| converted.index == stage)
        .unwrap_or_else(|| panic!("stage {stage} was not converted"));
    stage.image.config.on_build.clone()
}

#[test]
fn a_child_runs_its_base_images_triggers_and_does_not_keep_them() {
    let result = check("FROM example/parent\nRUN echo child\n", None);
    assert_eq!(
        run_commands(&result),
        [
            "echo parent-trigger-1",
            "echo parent-trigger-2",
            "echo child"
        ]
    );
    assert_eq!(on_build(&result, 0), None);
}

#[test]
fn a_child_of_an_image_with_triggers_records_only_its_own_onbuild() {
    let result = check(
        "FROM example/parent\nONBUILD RUN echo own\nRUN echo child\n",
        None,
    );
    assert_eq!(on_build(&result, 0), Some(vec!["RUN echo own".to_string()]));
}

#[test]
fn a_stage_from_a_stage_runs_its_onbuild_and_does_not_inherit_it() {
    let text = "\
FROM example/parent AS base
ONBUILD RUN echo base-trigger
RUN echo base

FROM base AS child
RUN echo child

FROM child
RUN echo grandchild
";
    let result = check(text, None);
    // The image's triggers run once (in `base`), `base`'s trigger once (in `child`); the
    // grandchild runs none.
    assert_eq!(
        run_commands(&result),
        [
            "echo parent-trigger-1",
            "echo parent-trigger-2",
            "echo base",
            "echo base-trigger",
            "echo child",
            "echo grandchild",
        ]
    );
    assert_eq!(
        on_build(&result, 0),
        Some(vec!["RUN echo base-trigger".to_string()])
    );
    assert_eq!(on_build(&result, 1), None);
    assert_eq!(on_build(&result, 2), None);
}

#[test]
fn the_stage_that_declares_onbuild_does_not_run_it() {
    let result = check(
        "FROM example/parent AS base\nONBUILD RUN echo later\n",
        None,
    );
    assert!(!run_commands(&result).contains(&"echo later".to_string()));
    assert_eq!(
        on_build(&result, 0),
        Some(vec!["RUN echo later".to_string()])
    );
}
