//! Build stages: meta args, grouping, lookup by name or index, `--target`, and no panic on any
//! instruction with odd arguments.

use kiln_frontend::instructions::{
    find_stage, parse_stages, resolve_target, Instruction, SourceFile, Stage, INSTRUCTION_NAMES,
};
use kiln_frontend::parser;

fn stages_of(text: &str) -> (Vec<String>, Vec<Stage>) {
    let dockerfile =
        parser::parse("Dockerfile", text).unwrap_or_else(|error| panic!("parser: {error}"));
    let (meta_args, stages) = parse_stages(&SourceFile::new("Dockerfile", text), &dockerfile)
        .unwrap_or_else(|error| panic!("{}", error.message));
    let meta = meta_args
        .iter()
        .flat_map(|arg| arg.args.iter().map(|definition| definition.name.clone()))
        .collect();
    (meta, stages)
}

/// Checks the stages of `text` as `index name base [keywords]` lines, and the meta arg names.
#[track_caller]
fn check(text: &str, expected_meta: &[&str], expected_stages: &[&str]) {
    let (meta, stages) = stages_of(text);
    assert_eq!(meta, expected_meta, "meta args of {text:?}");
    let described: Vec<String> = stages
        .iter()
        .map(|stage| {
            let keywords: Vec<&str> = stage.commands.iter().map(Instruction::keyword).collect();
            format!(
                "{} {} {} {:?}",
                stage.index,
                stage.name.as_deref().unwrap_or("-"),
                stage.base_name,
                keywords
            )
        })
        .collect();
    assert_eq!(described, expected_stages, "stages of {text:?}");
}

const MULTI: &str = "ARG BASE=alpine\nARG V\nFROM ${BASE} AS Build\nRUN make\nARG V\nCOPY . .\nFROM scratch\nCOPY --from=build /out /\nFROM build AS test\nRUN test\n";

#[test]
fn meta_args_and_grouping() {
    check(
        MULTI,
        &["BASE", "V"],
        &[
            "0 build ${BASE} [\"RUN\", \"ARG\", \"COPY\"]",
            "1 - scratch [\"COPY\"]",
            "2 test build [\"RUN\"]",
        ],
    );
    check("FROM a\n", &[], &["0 - a []"]);
    check(
        "# c\n\nARG A B=1\nFROM a\nARG C\n",
        &["A", "B"],
        &["0 - a [\"ARG\"]"],
    );
}

#[test]
fn stage_lookup_by_name_and_index() {
    let (_, stages) = stages_of(MULTI);
    assert_eq!(find_stage(&stages, "build"), Some(0));
    assert_eq!(find_stage(&stages, "BUILD"), Some(0));
    assert_eq!(find_stage(&stages, "Test"), Some(2));
    assert_eq!(find_stage(&stages, "1"), Some(1));
    assert_eq!(find_stage(&stages, "3"), None);
    assert_eq!(find_stage(&stages, "+1"), None);
    assert_eq!(find_stage(&stages, "alpine"), None);
    assert_eq!(find_stage(&stages, ""), None);
}

#[test]
fn target_resolution() {
    let text = MULTI;
    let (_, stages) = stages_of(text);
    let source = SourceFile::new("Dockerfile", text);
    assert_eq!(resolve_target(&source, &stages, None), Ok(2));
    assert_eq!(resolve_target(&source, &stages, Some("")), Ok(2));
    assert_eq!(resolve_target(&source, &stages, Some("BUILD")), Ok(0));
    let error = resolve_target(&source, &stages, Some("tset")).expect_err("unknown target");
    assert_eq!(
        error.to_string(),
        "Dockerfile: target stage \"tset\" could not be found (did you mean \"test\"?)"
    );
    let error = resolve_target(&source, &stages, Some("production")).expect_err("unknown target");
    assert_eq!(
        error.to_string(),
        "Dockerfile: target stage \"production\" could not be found"
    );
    assert!(resolve_target(&source, &[], None).is_err());
}

#[test]
fn stage_location_is_the_from_line() {
    let (_, stages) = stages_of(MULTI);
    let lines: Vec<usize> = stages
        .iter()
        .map(|stage| stage.location.start_line)
        .collect();
    assert_eq!(lines, vec![3, 7, 9]);
    assert_eq!(stages[0].location.original, "FROM ${BASE} AS Build");
}

#[test]
fn spans_of_commands() {
    let (_, stages) = stages_of("FROM a\nRUN a \\\n  b\n\nCOPY <<EOF /x\nhi\nEOF\nUSER u\n");
    let spans: Vec<(usize, usize)> = stages[0]
        .commands
        .iter()
        .map(|command| (command.span().start_line, command.span().end_line))
        .collect();
    assert_eq!(spans, vec![(2, 3), (5, 7), (8, 8)]);
}

/// Every instruction with odd arguments must give an answer or an error, never a panic
/// (HOSTILE-INPUTS D, BuildKit's `TestNilLinter`).
#[test]
fn odd_arguments_never_panic() {
    let argument_sets = [
        "foo=bar",
        "a",
        "a b",
        "a b c",
        "0 0",
        "",
        "=",
        "==",
        "\"",
        "'",
        "[",
        "[]",
        "[\"\"]",
        "[\"a\", 1]",
        "--",
        "--x",
        "--x=",
        "<<EOF",
        "<<",
        "\\",
        "$",
        "${",
        "${X:?msg}",
        "AS",
        "a AS",
        "NONE",
        "CMD",
        "CMD []",
        "--mount= true",
        "--mount=, true",
        "--mount=\" true",
        "--chmod= a b",
        "--interval= CMD x",
        "ONBUILD",
        "ONBUILD ONBUILD",
        "FROM",
        "é ü",
        "\u{0}",
    ];
    let mut answered = 0;
    for keyword in INSTRUCTION_NAMES
        .iter()
        .chain(["NOPE", "onbuild run", "ONBUILD COPY", "HEALTHCHECK CMD"].iter())
    {
        for arguments in argument_sets {
            for text in [
                format!("FROM busybox\n{keyword} {arguments}\n"),
                format!("{keyword} {arguments}\n"),
            ] {
                if let Ok(dockerfile) = parser::parse("Dockerfile", &text) {
                    let _ = parse_stages(&SourceFile::new("Dockerfile", &text), &dockerfile);
                    answered += 1;
                }
            }
        }
    }
    assert!(
        answered > 500,
        "only {answered} inputs reached the instructions layer"
    );
}

#[test]
fn long_lines_and_many_flags() {
    let long = "a".repeat(60_000);
    let text = format!(
        "FROM x\nRUN echo {long}\nCOPY {} src /d\n",
        "--exclude=x ".repeat(2000)
    );
    let (_, stages) = stages_of(&text);
    let Instruction::Copy(copy) = &stages[0].commands[1] else {
        panic!("not a COPY")
    };
    assert_eq!(copy.excludes.len(), 2000);
}
