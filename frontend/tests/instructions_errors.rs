//! Errors of the instructions layer: each names the file, line and column, quotes the line and,
//! for a misspelt name, suggests the intended one (HOSTILE-INPUTS section D).

use kiln_frontend::instructions::{parse_stages, SourceFile};
use kiln_frontend::parser;

/// Parses `text` through the parser and the instructions layer; the whole error as displayed.
fn error_of(text: &str) -> String {
    let dockerfile = match parser::parse("Dockerfile", text) {
        Ok(dockerfile) => dockerfile,
        Err(error) => return format!("parser: {error}"),
    };
    match parse_stages(&SourceFile::new("Dockerfile", text), &dockerfile) {
        Ok(_) => "accepted".to_string(),
        Err(error) => error.to_string(),
    }
}

/// Checks the full error display for `text`.
#[track_caller]
fn check(text: &str, expected: &str) {
    assert_eq!(error_of(text), expected, "for {text:?}");
}

/// Checks that the error for `FROM base` + `line` (on line 2) has the `message` (and its
/// suggestion, if any), located on line 2.
#[track_caller]
fn check_line(line: &str, message: &str) {
    let got = error_of(&format!("FROM base\n{line}\n"));
    let expected_prefix = "Dockerfile:2:";
    assert!(got.starts_with(expected_prefix), "for {line:?}: {got}");
    let first_line = got.lines().next().unwrap_or_default();
    let after_column = first_line
        .splitn(4, ':')
        .nth(3)
        .unwrap_or_default()
        .trim_start();
    assert_eq!(after_column, message, "for {line:?}: {got}");
    let quoted = format!("| {}", line.lines().next().unwrap_or_default());
    assert!(got.ends_with(&quoted), "quotes the line: {got}");
}

#[test]
fn unknown_instruction_suggests() {
    check(
        "FROM alpine\nRUNN echo\n",
        "Dockerfile:2:1: unknown instruction: RUNN (did you mean \"RUN\"?)\n      2 | RUNN echo",
    );
    check(
        "FROM alpine\n  cpoy a b\n",
        "Dockerfile:2:3: unknown instruction: cpoy (did you mean \"COPY\"?)\n      2 |   cpoy a b",
    );
    check(
        "FROM alpine\nFOO bar\n",
        "Dockerfile:2:1: unknown instruction: FOO\n      2 | FOO bar",
    );
    check(
        "FORM alpine\n",
        "Dockerfile:1:1: unknown instruction: FORM (did you mean \"FROM\"?)\n      1 | FORM alpine",
    );
}

#[test]
fn unknown_flag_suggests_among_the_instruction_flags() {
    check(
        "FROM alpine\nCOPY --fromm=build a /b\n",
        "Dockerfile:2:6: unknown flag: --fromm (did you mean \"--from\"?)\n      2 | COPY --fromm=build a /b",
    );
    check(
        "FROM alpine\nRUN --mout=type=cache,target=/x true\n",
        "Dockerfile:2:5: unknown flag: --mout (did you mean \"--mount\"?)\n      2 | RUN --mout=type=cache,target=/x true",
    );
    check_line(
        "ADD --checksun=sha256:x a /b",
        "unknown flag: --checksun (did you mean \"--checksum\"?)",
    );
    check_line(
        "HEALTHCHECK --intervall=1s CMD true",
        "unknown flag: --intervall (did you mean \"--interval\"?)",
    );
    check("FROM --platfrom=linux/amd64 alpine\n", "Dockerfile:1:6: unknown flag: --platfrom (did you mean \"--platform\"?)\n      1 | FROM --platfrom=linux/amd64 alpine");
    // COPY has no --checksum: no suggestion that is not COPY's.
    check_line("COPY --checksum=sha256:x a /b", "unknown flag: --checksum");
    check_line("MAINTAINER --boo joe@example.com", "unknown flag: --boo");
    check_line("USER --x=1 app", "unknown flag: --x");
}

#[test]
fn flag_value_errors() {
    check_line(
        "COPY --from=a --from=b x /y",
        "duplicate flag specified: --from",
    );
    check_line(
        "COPY --link=maybe x /y",
        "expecting boolean value for flag --link, not: maybe",
    );
    check_line("COPY --link= x /y", "missing a value on flag: --link");
    check_line("COPY --from x /y", "missing a value on flag: --from");
    check_line("COPY --exclude x /y", "missing a value on flag: --exclude");
    check_line(
        "RUN --network=bridge true",
        "invalid network mode \"bridge\"",
    );
    check_line(
        "RUN --network=hots true",
        "invalid network mode \"hots\" (did you mean \"host\"?)",
    );
    check_line(
        "RUN --security=privileged true",
        "security \"privileged\" is not valid",
    );
}

#[test]
fn copy_and_add_arguments() {
    check(
        "FROM alpine\nCOPY onlyone\n",
        "Dockerfile:2:1: COPY requires at least two arguments, but only one was provided. Destination could not be determined\n      2 | COPY onlyone",
    );
    check_line(
        "ADD onlyone",
        "ADD requires at least two arguments, but only one was provided. Destination could not be determined",
    );
    check_line("COPY [\"a\"]", "COPY requires at least two arguments, but only one was provided. Destination could not be determined");
    check_line("COPY --from=x", "COPY requires at least two arguments, but only one was provided. Destination could not be determined");
}

#[test]
fn bad_chmod_and_exclude() {
    check(
        "FROM alpine\nCOPY --chmod=999 a /b\n",
        "Dockerfile:2:6: invalid chmod parameter: '999'. it should be octal string and between 0 and 07777\n      2 | COPY --chmod=999 a /b",
    );
    check_line(
        "COPY --chmod=10000 a /b",
        "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777",
    );
    check_line("ADD --chmod=rwxr-xr-x a /b", "invalid chmod parameter: 'rwxr-xr-x'. it should be octal or a symbolic mode such as u+x,go-w");
    check_line(
        "COPY --exclude=[ a /b",
        "invalid --exclude pattern: bad pattern \"[\": unterminated character class",
    );
}

#[test]
fn heredoc_destination() {
    check_line(
        "COPY a <<EOF\nx\nEOF",
        "COPY cannot accept a heredoc as a destination",
    );
}

#[test]
fn onbuild_forbidden_triggers() {
    check_line(
        "ONBUILD FROM alpine",
        "FROM isn't allowed as an ONBUILD trigger",
    );
    check_line(
        "ONBUILD MAINTAINER me",
        "MAINTAINER isn't allowed as an ONBUILD trigger",
    );
    check_line(
        "ONBUILD ONBUILD RUN x",
        "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
    );
    check_line("ONBUILD", "ONBUILD requires at least one argument");
    check_line(
        "ONBUILD RUNN x",
        "unknown instruction: RUNN (did you mean \"RUN\"?)",
    );
    check_line("ONBUILD COPY a", "COPY requires at least two arguments, but only one was provided. Destination could not be determined");
}

#[test]
fn no_from() {
    check(
        "RUN echo\n",
        "Dockerfile:1:1: no build stage in current context: RUN before the first FROM\n      1 | RUN echo",
    );
    check(
        "ARG A=1\n# comment\nCOPY a b\nFROM x\n",
        "Dockerfile:3:1: no build stage in current context: COPY before the first FROM\n      3 | COPY a b",
    );
    check("ARG A\nARG B\n", "Dockerfile:2:1: dockerfile contains no stages to build: no FROM instruction\n      2 | ARG B");
}

#[test]
fn empty_file_and_comments_only() {
    for text in [
        "",
        "\n\n",
        "# just a comment\n# another\n",
        "# syntax=docker/dockerfile:1\n",
    ] {
        let got = error_of(text);
        assert!(
            got.starts_with("parser: ") || got == "Dockerfile: dockerfile contains no stages to build: the file has no instructions",
            "for {text:?}: {got}"
        );
    }
}

#[test]
fn from_errors() {
    check_line("FROM", "FROM requires either one or three arguments");
    check_line("FROM a b", "FROM requires either one or three arguments");
    check_line("FROM a AS", "FROM requires either one or three arguments");
    check_line("FROM a to b", "FROM requires either one or three arguments");
    check_line(
        "FROM a AS b c",
        "FROM requires either one or three arguments",
    );
    check_line(
        "FROM a AS 1st",
        "invalid name for build stage: \"1st\", name can't start with a number or contain symbols",
    );
    check_line("FROM a AS my/stage", "invalid name for build stage: \"my/stage\", name can't start with a number or contain symbols");
    check_line("FROM a AS $NAME", "invalid name for build stage: \"$NAME\", name can't start with a number or contain symbols");
    check(
        "FROM a AS -x\n",
        "Dockerfile:1:11: invalid name for build stage: \"-x\", name can't start with a number or contain symbols\n      1 | FROM a AS -x",
    );
}

#[test]
fn argument_count_errors() {
    for keyword in ["USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER"] {
        check_line(keyword, &format!("{keyword} requires exactly one argument"));
    }
    for keyword in ["EXPOSE", "VOLUME", "ARG", "HEALTHCHECK", "SHELL"] {
        check_line(
            keyword,
            &format!("{keyword} requires at least one argument"),
        );
    }
    check_line(
        "VOLUME [\"\"]",
        "VOLUME specified can not be an empty string",
    );
    check_line(
        "VOLUME [\" \", \"/a\"]",
        "VOLUME specified can not be an empty string",
    );
    check_line("SHELL []", "SHELL requires at least one argument");
    check_line(
        "SHELL /bin/bash -c",
        "SHELL requires the arguments to be in JSON form",
    );
    check_line("ARG =x", "ARG names can not be blank");
}

#[test]
fn env_and_label_errors() {
    // The parser rejects `ENV PATH` itself; either layer must answer with line 2.
    let got = error_of("FROM a\nENV PATH\n");
    assert!(
        got.contains("Dockerfile:2") && got.contains("ENV must have two arguments"),
        "{got}"
    );
    let got = error_of("FROM a\nLABEL\n");
    assert!(
        got.contains("Dockerfile:2") && got.contains("LABEL"),
        "{got}"
    );
    let got = error_of("FROM a\nENV =x\n");
    assert!(
        got.contains("Dockerfile:2") && got.contains("ENV names can not be blank"),
        "{got}"
    );
}

#[test]
fn healthcheck_errors() {
    check_line("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments");
    check_line("HEALTHCHECK CMD", "missing command after HEALTHCHECK CMD");
    check_line(
        "HEALTHCHECK CMD []",
        "missing command after HEALTHCHECK CMD",
    );
    check_line(
        "HEALTHCHECK RUN true",
        "unknown type \"RUN\" in HEALTHCHECK (try CMD)",
    );
    check_line(
        "HEALTHCHECK --interval=5 CMD true",
        "missing unit in duration \"5\"",
    );
    check_line(
        "HEALTHCHECK --interval=soon CMD true",
        "invalid duration \"soon\"",
    );
    check_line(
        "HEALTHCHECK --timeout=3x CMD true",
        "unknown unit \"x\" in duration \"3x\"",
    );
    check_line(
        "HEALTHCHECK --interval=50us CMD true",
        "interval \"interval\" cannot be less than 1ms",
    );
    check_line(
        "HEALTHCHECK --start-period=-1s CMD true",
        "interval \"start-period\" cannot be less than 1ms",
    );
    check_line(
        "HEALTHCHECK --retries=-1 CMD true",
        "--retries cannot be negative (-1)",
    );
    check_line(
        "HEALTHCHECK --retries=many CMD true",
        "invalid value for --retries: \"many\"",
    );
    check_line(
        "HEALTHCHECK --retries=99999999999 CMD true",
        "invalid value for --retries: \"99999999999\"",
    );
}

#[test]
fn mount_errors_are_located_at_the_flag() {
    check(
        "FROM a\nRUN --mount=type=cache,target=/x,sharing=nope true\n",
        "Dockerfile:2:13: unsupported sharing value \"nope\"\n      2 | RUN --mount=type=cache,target=/x,sharing=nope true",
    );
    check_line(
        "RUN --mount=type=cahe,target=/x true",
        "unsupported mount type \"cahe\" (did you mean \"cache\"?)",
    );
    check_line(
        "RUN --mount=typ=cache,target=/x true",
        "unexpected key 'typ' in 'typ=cache' (did you mean \"type\"?)",
    );
    check_line(
        "RUN --mount=type=bind,target=/ true",
        "invalid mount target \"/\"",
    );
    check_line(
        "RUN --mount=type=secret true",
        "invalid secret mount. one of source, target required",
    );
}

#[test]
fn mount_from_may_not_hold_a_variable() {
    check_line(
        "RUN --mount=from=$STAGE,target=/x true",
        "'from' doesn't support variable expansion, define alias stage instead",
    );
    assert_eq!(
        error_of("FROM a\nRUN --mount=type=$T,target=/x true\n"),
        "accepted"
    );
    assert_eq!(
        error_of("FROM a\nRUN --mount=from=x$,target=/x true\n"),
        "accepted"
    );
}

#[test]
fn nested_json_array_is_an_error_with_its_line() {
    for line in [
        "CMD [[\"a\"]]",
        "RUN [\"a\", [\"b\"]]",
        "COPY [[\"a\"], \"b\"]",
    ] {
        let got = error_of(&format!("FROM a\n{line}\n"));
        assert!(
            got.contains("Dockerfile:2") && got.ends_with(&format!("| {line}")),
            "for {line:?}: {got}"
        );
    }
}
