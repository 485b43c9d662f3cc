//! The parser's behaviour beyond BuildKit's dump corpus: heredocs, line numbers, warnings,
//! directives, comments, flags, and errors that name the file and line.

use kiln_frontend::ast::{Args, Dockerfile, Heredoc, Node};
use kiln_frontend::parser::{self, dump, parse};

fn parse_ok(text: &str) -> Dockerfile {
    parse("Dockerfile", text).unwrap_or_else(|error| panic!("parse failed: {error}"))
}

fn parse_error(text: &str) -> kiln_frontend::error::Error {
    match parse("Dockerfile", text) {
        Ok(dockerfile) => panic!("expected an error, got {}", dump(&dockerfile)),
        Err(error) => error,
    }
}

fn heredoc(name: &str, content: &str, expand: bool, chomp: bool, fd: Option<u32>) -> Heredoc {
    Heredoc {
        name: name.into(),
        content: content.into(),
        expand,
        chomp,
        file_descriptor: fd,
    }
}

fn words(node: &Node) -> Vec<String> {
    match &node.args {
        Args::Words(words) => words.clone(),
        other => panic!("not words: {other:?}"),
    }
}

#[test]
fn heredocs_are_extracted_with_buildkit_rules() {
    let text = "FROM alpine\n\
ENV NAME=me\n\
USER <<NOTHERE\n\
NOTHERE\n\
RUN <<EMPTY\n\
EMPTY\n\
RUN 3<<FD\n\
FD\n\
RUN \"<<QUOTED\"\n\
RUN <<KEEPTABS\n\
\tfoo\n\
\tbar\n\
KEEPTABS\n\
RUN <<-STRIP\n\
\tbaz\n\
\t\tquux\n\
\tSTRIP\n\
RUN <<-'NOEXPAND'\n\
\tdon't expand $NAME\n\
NOEXPAND\n\
RUN --mount=type=cache,target=/c <<MOUNT\n\
# not a comment here\n\
echo hi # nor here\n\
MOUNT\n\
COPY <<ONE <<TWO /dest/\n\
first\n\
ONE\n\
second\n\
TWO\n\
COPY <<X <<Y /swap\n\
Y\n\
X\n\
X\n\
Y\n\
RUN cat <<EOF > /f && echo done\n\
line\n\
EOF\n\
RUN <<eo'f'\n\
body\n\
eof\n\
RUN <<eo\\'f\n\
body\n\
eo'f\n\
RUN <<'one two'\n\
body\n\
one two\n\
RUN <<  SPACED  > out\n\
SPACED\n\
RUN <<\"DQ\" python3\n\
print('x')\n\
DQ\n\
ADD <<file.txt /dest\n\
hello\n\
file.txt\n";
    let dockerfile = parse_ok(text);
    let expected: Vec<Vec<Heredoc>> = vec![
        vec![],
        vec![],
        vec![],
        vec![], // NOTHERE: an (unknown) instruction of its own
        vec![heredoc("EMPTY", "", true, false, None)],
        vec![heredoc("FD", "", true, false, Some(3))],
        vec![],
        vec![heredoc("KEEPTABS", "\tfoo\n\tbar\n", true, false, None)],
        vec![heredoc("STRIP", "baz\nquux\n", true, true, None)],
        vec![heredoc(
            "NOEXPAND",
            "don't expand $NAME\n",
            false,
            true,
            None,
        )],
        vec![heredoc(
            "MOUNT",
            "# not a comment here\necho hi # nor here\n",
            true,
            false,
            None,
        )],
        vec![
            heredoc("ONE", "first\n", true, false, None),
            heredoc("TWO", "second\n", true, false, None),
        ],
        vec![
            heredoc("X", "Y\n", true, false, None),
            heredoc("Y", "X\n", true, false, None),
        ],
        vec![heredoc("EOF", "line\n", true, false, None)],
        vec![heredoc("eof", "body\n", false, false, None)],
        vec![heredoc("eo'f", "body\n", true, false, None)],
        vec![heredoc("one two", "body\n", false, false, None)],
        vec![heredoc("SPACED", "", true, false, None)],
        vec![heredoc("DQ", "print('x')\n", false, false, None)],
        vec![heredoc("file.txt", "hello\n", true, false, None)],
    ];
    let actual: Vec<Vec<Heredoc>> = dockerfile
        .nodes
        .iter()
        .map(|node| node.heredocs.clone())
        .collect();
    assert_eq!(actual, expected);
    // The heredoc bodies are part of the instruction's lines.
    let mount = &dockerfile.nodes[10];
    assert_eq!((mount.start_line, mount.end_line), (21, 24));
    assert_eq!(
        mount.flags,
        vec!["--mount=type=cache,target=/c".to_string()]
    );
    assert_eq!(words(mount), vec!["<<MOUNT".to_string()]);
}

#[test]
fn heredocs_only_in_shell_form_of_run_copy_add() {
    let dockerfile =
        parse_ok("FROM a\nRUN [\"<<EOF\"]\nCMD <<EOF\nEOF\nENTRYPOINT [\"<<'EOF'\"]\n");
    assert!(dockerfile.nodes.iter().all(|node| node.heredocs.is_empty()));
    assert_eq!(
        dockerfile.nodes.len(),
        5,
        "CMD takes no heredoc, so EOF is its own line"
    );
}

#[test]
fn onbuild_heredocs_belong_to_the_wrapped_instruction() {
    let dockerfile = parse_ok("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\nRUN true\n");
    let onbuild = &dockerfile.nodes[1];
    assert_eq!(
        onbuild.heredocs,
        vec![heredoc("EOF", "echo hi\n", true, false, None)]
    );
    let Args::Nested(inner) = &onbuild.args else {
        panic!("not nested")
    };
    assert_eq!(inner.keyword, "run");
    assert_eq!(inner.heredocs, onbuild.heredocs);
    assert_eq!((onbuild.start_line, onbuild.end_line), (2, 4));
    assert_eq!(dockerfile.nodes[2].start_line, 5);
}

#[test]
fn unterminated_heredoc_is_an_error_at_its_instruction() {
    let error = parse_error("FROM a\nRUN <<EOF\necho hi\n");
    assert_eq!(error.location.line, 2);
    assert!(
        error.to_string().contains("unterminated heredoc"),
        "{error}"
    );
    assert!(error.to_string().contains("RUN <<EOF"), "{error}");
}

#[test]
fn line_numbers_cover_continuations_and_comments() {
    let text = "# comment\n\n\nFROM a\n\nRUN one \\\n  two\n\n# about three\nRUN three \\\n# inside\n  four \\\n\n  five\nCMD six \\";
    let dockerfile = parse_ok(text);
    let spans: Vec<(usize, usize)> = dockerfile
        .nodes
        .iter()
        .map(|node| (node.start_line, node.end_line))
        .collect();
    assert_eq!(spans, vec![(4, 4), (6, 7), (10, 14), (15, 15)]);
    assert_eq!(
        words(&dockerfile.nodes[2]),
        vec!["three   four   five".to_string()]
    );
    assert_eq!(
        dockerfile.nodes[2].prev_comment,
        vec!["about three".to_string()]
    );
    assert_eq!(
        dockerfile.nodes[0].prev_comment,
        vec!["comment".to_string()]
    );
    assert_eq!(words(&dockerfile.nodes[3]), vec!["six".to_string()]);
}

#[test]
fn empty_continuation_lines_are_warnings() {
    let text = "FROM a\nRUN valid \\\n    continuation\nRUN something \\\n\n    following \\\n\n    more\nRUN another \\\n\n    thing\nRUN non-indented \\\n# comment\n   after-comment\n";
    let dockerfile = parse_ok(text);
    let warnings: Vec<(usize, &str)> = dockerfile
        .warnings
        .iter()
        .map(|warning| (warning.line, warning.message.as_str()))
        .collect();
    assert_eq!(
        warnings,
        vec![
            (
                8,
                "empty continuation line found in: RUN something     following     more"
            ),
            (
                11,
                "empty continuation line found in: RUN another     thing"
            ),
        ]
    );
}

#[test]
fn directives_at_the_top_only() {
    let dockerfile = parse_ok("# syntax=docker/dockerfile:1\n#ESCAPE = `\n  # check=skip=all\n# a comment\n# syntax=not-a-directive-any-more\nFROM a\n");
    let directives: Vec<(&str, &str, usize)> = dockerfile
        .directives
        .iter()
        .map(|d| (d.name.as_str(), d.value.as_str(), d.line))
        .collect();
    assert_eq!(
        directives,
        vec![
            ("syntax", "docker/dockerfile:1", 1),
            ("escape", "`", 2),
            ("check", "skip=all", 3)
        ]
    );
    assert_eq!(dockerfile.escape, '`');
}

#[test]
fn repeated_directive_is_an_error() {
    let error = parse_error("# escape=`\n# escape=\\\nFROM a\n");
    assert_eq!(error.location.line, 2);
    assert!(
        error.message.contains("only one escape parser directive"),
        "{error}"
    );
}

#[test]
fn invalid_escape_is_an_error() {
    let error = parse_error("# escape=x\nFROM a\n");
    assert_eq!(error.location.line, 1);
    assert!(error.message.contains("invalid escape token"), "{error}");
}

#[test]
fn directives_stop_at_the_first_other_line() {
    for text in [
        "\n# escape=`\nFROM a\n",
        "# hello\n# escape=`\nFROM a\n",
        "FROM a\n# escape=`\n",
        "# unknown=x\n# escape=`\nFROM a\n",
    ] {
        let dockerfile = parse_ok(text);
        assert_eq!(dockerfile.escape, '\\', "{text:?}");
    }
}

#[test]
fn backtick_escape_for_windows_files() {
    let text = "# escape=`\nFROM mcr.microsoft.com/windows/servercore\nSHELL [\"powershell\", \"-Command\"]\nRUN Write-Host `\n    hello; `\n    dir C:\\\nCOPY C:\\src\\ C:\\dst\\\n";
    let dockerfile = parse_ok(text);
    assert_eq!(
        dump(&dockerfile),
        "(from \"mcr.microsoft.com/windows/servercore\")\n(shell \"powershell\" \"-Command\")\n(run \"Write-Host     hello;     dir C:\\\\\")\n(copy \"C:\\\\src\\\\\" \"C:\\\\dst\\\\\")\n"
    );
}

#[test]
fn byte_order_mark_and_crlf() {
    let dockerfile = parse_ok("\u{feff}# escape=`\r\nFROM a\r\nRUN echo `\r\n  hi\r\n");
    assert_eq!(dockerfile.escape, '`');
    assert_eq!(dump(&dockerfile), "(from \"a\")\n(run \"echo   hi\")\n");
}

#[test]
fn flags_json_and_args_per_instruction() {
    let text = "FROM --platform=$BUILDPLATFORM golang:1.22 AS build\n\
COPY --from=build --chmod=755 -- /out /bin/\n\
RUN --mount=type=secret,id=x [\"sh\", \"-c\", \"true\"]\n\
HEALTHCHECK NONE\n\
HEALTHCHECK --interval=5s CMD [\"curl\", \"-f\", \"x\"]\n\
ARG A B=2 C=\"x y\"\n\
ENV A=1 B=\"2 3\"\n\
ENV OLD value with spaces\n\
LABEL a=b\n\
ONBUILD COPY --chown=1:1 . /app\n\
SHELL [\"/bin/bash\", \"-c\"]\n\
STOPSIGNAL SIGKILL\n\
EXPOSE 80/tcp 443\n\
VOLUME [\"/data\"]\n\
WORKDIR /app dir\n\
USER me:group\n\
MAINTAINER someone <x@y>\n\
ENTRYPOINT exec me\n\
RUNN typo\n";
    let dockerfile = parse_ok(text);
    assert_eq!(
        dump(&dockerfile),
        "(from [\"--platform=$BUILDPLATFORM\"] \"golang:1.22\" \"AS\" \"build\")\n\
(copy [\"--from=build\" \"--chmod=755\"] \"/out\" \"/bin/\")\n\
(run [\"--mount=type=secret,id=x\"] \"sh\" \"-c\" \"true\")\n\
(healthcheck \"NONE\")\n\
(healthcheck [\"--interval=5s\"] \"CMD\" \"curl\" \"-f\" \"x\")\n\
(arg \"A\" \"B=2\" \"C=\\\"x y\\\"\")\n\
(env \"A\" \"1\" \"=\" \"B\" \"\\\"2 3\\\"\" \"=\")\n\
(env \"OLD\" \"value with spaces\" \"\")\n\
(label \"a\" \"b\" \"=\")\n\
(onbuild (copy [\"--chown=1:1\"] \".\" \"/app\"))\n\
(shell \"/bin/bash\" \"-c\")\n\
(stopsignal \"SIGKILL\")\n\
(expose \"80/tcp\" \"443\")\n\
(volume \"/data\")\n\
(workdir \"/app dir\")\n\
(user \"me:group\")\n\
(maintainer \"someone <x@y>\")\n\
(entrypoint \"exec me\")\n\
(runn \"\")\n"
    );
    let json_forms: Vec<bool> = dockerfile.nodes.iter().map(|node| node.json_form).collect();
    assert_eq!(
        json_forms,
        vec![
            false, false, true, false, true, false, false, false, false, false, true, false, false,
            true, false, false, false, false, false
        ]
    );
    assert_eq!(
        dockerfile.nodes[0].original,
        "FROM --platform=$BUILDPLATFORM golang:1.22 AS build"
    );
    // Unknown instructions are kept; the list of known ones feeds "did you mean".
    assert_eq!(dockerfile.nodes[18].keyword, "runn");
    let suggestion =
        kiln_frontend::error::closest("RUNN", parser::KNOWN_INSTRUCTIONS.iter().copied());
    assert_eq!(suggestion.as_deref(), Some("RUN"));
}

#[test]
fn errors_name_file_line_column_and_quote_the_line() {
    let error = parse("ci/Dockerfile.test", "FROM busybox\n\n   ENV PATH\n").unwrap_err();
    assert_eq!(error.location.file, "ci/Dockerfile.test");
    assert_eq!((error.location.line, error.location.column), (3, 4));
    assert_eq!(error.location.line_text, "   ENV PATH");
    assert_eq!(
        error.to_string(),
        "ci/Dockerfile.test:3:4: ENV must have two arguments\n      3 |    ENV PATH"
    );

    let error = parse_error("FROM a\nLABEL a=b c\n");
    assert_eq!(error.location.line, 2);
    assert!(error.message.contains("can't find = in \"c\""), "{error}");

    let error = parse_error("FROM a\nCMD [\"a\", 1]\n");
    assert!(
        error.message.contains("must be comprised of strings only"),
        "{error}"
    );

    let error = parse_error("# only\n# comments\n\n");
    assert_eq!(error.location.line, 0);
    assert_eq!(error.to_string(), "Dockerfile: file with no instructions");
}

#[test]
fn a_line_over_64_kib_is_an_error_naming_it() {
    let long = format!("FROM a\nLABEL x={}\n", "a".repeat(70_000));
    let error = parse_error(&long);
    assert_eq!(error.location.line, 2);
    assert!(
        error
            .message
            .contains("greater than max allowed size of 65535"),
        "{error}"
    );
    assert!(
        error.location.line_text.len() < 300,
        "the quoted line is shortened"
    );
    // Exactly the limit is fine.
    let limit = format!(
        "FROM a\nLABEL x={}\n",
        "a".repeat(65_535 - "LABEL x=".len())
    );
    assert!(parse("Dockerfile", &limit).is_ok());
}

#[test]
fn text_that_is_not_utf8_is_an_error_naming_its_line() {
    let error = parser::parse_bytes("Dockerfile", b"FROM a\nRUN echo \xff\n").unwrap_err();
    assert_eq!((error.location.line, error.location.column), (2, 10));
}

#[test]
fn nested_onbuild_is_parsed_but_bounded() {
    let dockerfile = parse_ok("ONBUILD ONBUILD RUN x\n");
    assert_eq!(dump(&dockerfile), "(onbuild (onbuild (run \"x\")))\n");
    let deep = format!("{}RUN x\n", "ONBUILD ".repeat(5_000));
    let error = parse_error(&deep);
    assert!(
        error.message.contains("ONBUILD nested more than"),
        "{error}"
    );
}
