//! Typed instructions from Dockerfile lines: every instruction and every flag, data-driven.

use kiln_frontend::instructions::{
    parse_stages, Chmod, CommandLine, Instruction, NetworkMode, SecurityMode, SourceFile,
    SourcesAndDest,
};
use kiln_frontend::parser;

/// Parses `FROM base` then `lines`, and returns the stage's instructions, dumped one a line.
fn dump_stage(lines: &str) -> String {
    let text = format!("FROM base\n{lines}\n");
    let dockerfile =
        parser::parse("Dockerfile", &text).unwrap_or_else(|error| panic!("parser: {error}"));
    let source = SourceFile::new("Dockerfile", &text);
    let (_, stages) =
        parse_stages(&source, &dockerfile).unwrap_or_else(|error| panic!("{lines:?}: {error}"));
    stages[0]
        .commands
        .iter()
        .map(dump)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks that `lines` (after a `FROM base`) give the `expected` dump.
#[track_caller]
fn check(lines: &str, expected: &str) {
    assert_eq!(dump_stage(lines), expected, "for {lines:?}");
}

fn command(command: &CommandLine) -> String {
    let mut text = format!(
        "{}{:?}",
        if command.prepend_shell {
            "shell"
        } else {
            "exec"
        },
        command.args
    );
    for file in &command.files {
        text += &format!(
            " file({}{}{}: {:?})",
            file.name,
            if file.chomp { ",chomp" } else { "" },
            if file.expand { "" } else { ",raw" },
            file.data
        );
    }
    text
}

fn files(files: &SourcesAndDest) -> String {
    let mut text = format!("{:?}", files.sources);
    for content in &files.contents {
        text += &format!(
            " <<{}{}={:?}",
            content.path,
            if content.expand { "" } else { "(raw)" },
            content.data
        );
    }
    text + &format!(" -> {:?}", files.dest)
}

fn option(name: &str, value: &Option<String>) -> String {
    value
        .as_ref()
        .map(|value| format!(" {name}={value}"))
        .unwrap_or_default()
}

fn dump(instruction: &Instruction) -> String {
    let span = instruction.span();
    let head = format!(
        "{}@{}-{}",
        instruction.keyword(),
        span.start_line,
        span.end_line
    );
    let body = match instruction {
        Instruction::From(from) => format!(
            "{}{}{}",
            from.image,
            option("as", &from.name),
            option("platform", &from.platform)
        ),
        Instruction::Run(run) => {
            let mut text = command(&run.command);
            for mount in &run.mounts {
                text += &format!(" mount={mount}");
            }
            if run.network != NetworkMode::Default {
                text += &format!(" network={:?}", run.network);
            }
            if run.security != SecurityMode::Sandbox {
                text += &format!(" security={:?}", run.security);
            }
            text
        }
        Instruction::Cmd(cmd) => command(&cmd.command),
        Instruction::Entrypoint(entrypoint) => command(&entrypoint.command),
        Instruction::Label(label) => label
            .labels
            .iter()
            .map(|pair| format!("{}={}", pair.key, pair.value))
            .collect::<Vec<_>>()
            .join(" "),
        Instruction::Env(env) => env
            .pairs
            .iter()
            .map(|pair| {
                format!(
                    "{}{}{}",
                    pair.key,
                    if pair.no_delimiter { " " } else { "=" },
                    pair.value
                )
            })
            .collect::<Vec<_>>()
            .join(" | "),
        Instruction::Maintainer(maintainer) => maintainer.maintainer.clone(),
        Instruction::Expose(expose) => format!("{:?}", expose.ports),
        Instruction::Copy(copy) => {
            let mut text = files(&copy.files);
            text += &option("from", &copy.from);
            text += &option("chown", &copy.chown);
            text += &option("chmod", &copy.chmod);
            if copy.link {
                text += " link";
            }
            if copy.parents {
                text += " parents";
            }
            for exclude in &copy.excludes {
                text += &format!(" exclude={exclude}");
            }
            text
        }
        Instruction::Add(add) => {
            let mut text = files(&add.files);
            text += &option("chown", &add.chown);
            text += &option("chmod", &add.chmod);
            if add.link {
                text += " link";
            }
            if let Some(keep) = add.keep_git_dir {
                text += &format!(" keep-git-dir={keep}");
            }
            text += &option("checksum", &add.checksum);
            if let Some(unpack) = add.unpack {
                text += &format!(" unpack={unpack}");
            }
            for exclude in &add.excludes {
                text += &format!(" exclude={exclude}");
            }
            text
        }
        Instruction::Volume(volume) => format!("{:?}", volume.volumes),
        Instruction::User(user) => user.user.clone(),
        Instruction::Workdir(workdir) => workdir.path.clone(),
        Instruction::Arg(arg) => arg
            .args
            .iter()
            .map(|definition| match &definition.default {
                Some(default) => format!("{}={}", definition.name, default),
                None => definition.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Instruction::Onbuild(onbuild) => {
            format!("{:?} => {}", onbuild.expression, dump(&onbuild.trigger))
        }
        Instruction::StopSignal(signal) => signal.signal.clone(),
        Instruction::Healthcheck(health) => {
            let health = &health.health;
            let mut text = format!("{:?}", health.test.clone().unwrap_or_default());
            for (name, value) in [
                ("interval", health.interval),
                ("timeout", health.timeout),
                ("start-period", health.start_period),
                ("start-interval", health.start_interval),
                ("retries", health.retries),
            ] {
                if let Some(value) = value {
                    text += &format!(" {name}={value}");
                }
            }
            text
        }
        Instruction::Shell(shell) => format!("{:?}", shell.shell),
    };
    format!("{head} {body}")
}

#[test]
fn from_forms() {
    let dump = |text: &str| {
        let dockerfile = parser::parse("Dockerfile", text).expect("parses");
        let (_, stages) =
            parse_stages(&SourceFile::new("Dockerfile", text), &dockerfile).expect("valid");
        stages
            .iter()
            .map(|stage| {
                format!(
                    "{}:{}:{:?}:{:?}@{}",
                    stage.index,
                    stage.base_name,
                    stage.name,
                    stage.platform,
                    stage.location.start_line
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(dump("FROM alpine\n"), vec!["0:alpine:None:None@1"]);
    assert_eq!(
        dump("FROM alpine AS build\n"),
        vec!["0:alpine:Some(\"build\"):None@1"]
    );
    assert_eq!(
        dump("from alpine as Build-1.x_y\n"),
        vec!["0:alpine:Some(\"build-1.x_y\"):None@1"]
    );
    assert_eq!(
        dump("FROM --platform=$BUILDPLATFORM golang:1 AS b\nFROM ${BASE}\n"),
        vec![
            "0:golang:1:Some(\"b\"):Some(\"$BUILDPLATFORM\")@1",
            "1:${BASE}:None:None@2"
        ]
    );
}

#[test]
fn run_shell_exec_and_heredoc() {
    check("RUN echo hi", "RUN@2-2 shell[\"echo hi\"]");
    check("RUN [\"echo\", \"hi\"]", "RUN@2-2 exec[\"echo\", \"hi\"]");
    check("RUN echo a \\\n  b", "RUN@2-3 shell[\"echo a   b\"]");
    check(
        "RUN <<EOF\necho hi\nEOF",
        "RUN@2-4 shell[\"<<EOF\"] file(EOF: \"echo hi\\n\")",
    );
    check(
        "RUN <<-'EOF'\n\techo $X\nEOF",
        "RUN@2-4 shell[\"<<-'EOF'\"] file(EOF,chomp,raw: \"echo $X\\n\")",
    );
}

#[test]
fn run_flags() {
    check(
        "RUN --network=none true",
        "RUN@2-2 shell[\"true\"] network=None",
    );
    check(
        "RUN --network=host true",
        "RUN@2-2 shell[\"true\"] network=Host",
    );
    check("RUN --network=default true", "RUN@2-2 shell[\"true\"]");
    check(
        "RUN --security=insecure true",
        "RUN@2-2 shell[\"true\"] security=Insecure",
    );
    check("RUN --security=sandbox true", "RUN@2-2 shell[\"true\"]");
    check(
        "RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=$ID true",
        "RUN@2-2 shell[\"true\"] mount=type=cache,target=/root/.cache mount=type=secret,id=$ID",
    );
}

#[test]
fn run_flags_used_and_mounts_unexpanded() {
    let text =
        "FROM base\nRUN --network=none --mount=type=tmpfs,target=/t --mount=target=/src true\n";
    let dockerfile = parser::parse("Dockerfile", text).expect("parses");
    let (_, stages) =
        parse_stages(&SourceFile::new("Dockerfile", text), &dockerfile).expect("valid");
    let Instruction::Run(run) = &stages[0].commands[0] else {
        panic!("not a RUN")
    };
    assert_eq!(run.flags_used, vec!["network", "mount"]);
    let mounts = run.mounts_unexpanded().expect("valid mounts");
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[1].target.as_deref(), Some("/src"));
    assert!(mounts[1].read_only);
}

#[test]
fn cmd_and_entrypoint_keep_their_form() {
    check("CMD echo hi", "CMD@2-2 shell[\"echo hi\"]");
    check("CMD [\"a\", \"b c\"]", "CMD@2-2 exec[\"a\", \"b c\"]");
    check("CMD []", "CMD@2-2 exec[]");
    check(
        "ENTRYPOINT [\"/bin/app\"]",
        "ENTRYPOINT@2-2 exec[\"/bin/app\"]",
    );
    check(
        "ENTRYPOINT /bin/app --flag",
        "ENTRYPOINT@2-2 shell[\"/bin/app --flag\"]",
    );
    check("ENTRYPOINT []", "ENTRYPOINT@2-2 exec[]");
    // Not valid JSON: the shell form, as Docker does.
    check("CMD [\"a\", b]", "CMD@2-2 shell[\"[\\\"a\\\", b]\"]");
}

#[test]
fn env_and_label_pairs() {
    check("ENV A=1 B=\"two words\"", "ENV@2-2 A=1 | B=\"two words\"");
    check("ENV PATH /usr/bin:$PATH", "ENV@2-2 PATH /usr/bin:$PATH");
    check("ENV A=", "ENV@2-2 A=");
    check("LABEL a=b \"c d\"=e", "LABEL@2-2 a=b \"c d\"=e");
    check("LABEL version 1.0", "LABEL@2-2 version=1.0");
}

#[test]
fn arg_definitions() {
    check("ARG A", "ARG@2-2 A");
    check("ARG A=1 B C=", "ARG@2-2 A=1 B C=");
    check("ARG A=\"x y\"", "ARG@2-2 A=\"x y\"");
}

#[test]
fn single_value_instructions() {
    check("USER app:app", "USER@2-2 app:app");
    check("WORKDIR /a b", "WORKDIR@2-2 /a b");
    check("STOPSIGNAL SIGTERM", "STOPSIGNAL@2-2 SIGTERM");
    check("MAINTAINER Jane <j@x>", "MAINTAINER@2-2 Jane <j@x>");
}

#[test]
fn expose_and_volume() {
    check(
        "EXPOSE 8080 80/udp $PORT",
        "EXPOSE@2-2 [\"$PORT\", \"80/udp\", \"8080\"]",
    );
    check("VOLUME /data /logs", "VOLUME@2-2 [\"/data\", \"/logs\"]");
    check(
        "VOLUME [\"/data\", \"/x y\"]",
        "VOLUME@2-2 [\"/data\", \"/x y\"]",
    );
}

#[test]
fn shell_json_only() {
    check(
        "SHELL [\"/bin/bash\", \"-c\"]",
        "SHELL@2-2 [\"/bin/bash\", \"-c\"]",
    );
}

#[test]
fn copy_forms_and_flags() {
    check("COPY a b /dest/", "COPY@2-2 [\"a\", \"b\"] -> \"/dest/\"");
    check(
        "COPY [\"a b\", \"/dest\"]",
        "COPY@2-2 [\"a b\"] -> \"/dest\"",
    );
    check(
        "COPY --from=build --chown=1:2 --chmod=0755 --link --parents --exclude=*.md --exclude=tmp x /y",
        "COPY@2-2 [\"x\"] -> \"/y\" from=build chown=1:2 chmod=0755 link parents exclude=*.md exclude=tmp",
    );
    check(
        "COPY --link=false --chmod=u+x,go=rX a /b",
        "COPY@2-2 [\"a\"] -> \"/b\" chmod=u+x,go=rX",
    );
    check(
        "COPY --chmod=$MODE a /b",
        "COPY@2-2 [\"a\"] -> \"/b\" chmod=$MODE",
    );
    check("COPY --from=0 a /b", "COPY@2-2 [\"a\"] -> \"/b\" from=0");
}

#[test]
fn copy_heredoc_sources() {
    check(
        "COPY <<EOF /etc/motd\nhello $USER\nEOF",
        "COPY@2-4 [] <<EOF=\"hello $USER\\n\" -> \"/etc/motd\"",
    );
    check(
        "COPY <<'A' <<B /dir/\none\nA\ntwo\nB",
        "COPY@2-6 [] <<A(raw)=\"one\\n\" <<B=\"two\\n\" -> \"/dir/\"",
    );
    check(
        "COPY file <<EOF /dir/\nx\nEOF",
        "COPY@2-4 [\"file\"] <<EOF=\"x\\n\" -> \"/dir/\"",
    );
}

#[test]
fn add_flags() {
    check(
        "ADD --chown=app --chmod=644 --link --keep-git-dir=true --checksum=sha256:abc --unpack=false --exclude=.git https://x/y.tar /opt/",
        "ADD@2-2 [\"https://x/y.tar\"] -> \"/opt/\" chown=app chmod=644 link keep-git-dir=true checksum=sha256:abc unpack=false exclude=.git",
    );
    check("ADD a.tar /", "ADD@2-2 [\"a.tar\"] -> \"/\"");
    check(
        "ADD --unpack a.tar /",
        "ADD@2-2 [\"a.tar\"] -> \"/\" unpack=true",
    );
}

#[test]
fn healthcheck_forms() {
    check("HEALTHCHECK NONE", "HEALTHCHECK@2-2 [\"NONE\"]");
    check(
        "HEALTHCHECK CMD curl -f http://x/",
        "HEALTHCHECK@2-2 [\"CMD-SHELL\", \"curl -f http://x/\"]",
    );
    check(
        "HEALTHCHECK CMD [\"curl\", \"-f\", \"x\"]",
        "HEALTHCHECK@2-2 [\"CMD\", \"curl\", \"-f\", \"x\"]",
    );
    check(
        "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --start-interval=5ms --retries=3 CMD true",
        "HEALTHCHECK@2-2 [\"CMD-SHELL\", \"true\"] interval=30000000000 timeout=90000000000 start-period=1500000000 start-interval=5000000 retries=3",
    );
    // Zero values are left out, as Docker's omitempty.
    check(
        "HEALTHCHECK --interval=0s --retries=0 CMD true",
        "HEALTHCHECK@2-2 [\"CMD-SHELL\", \"true\"]",
    );
    check(
        "healthcheck cmd true",
        "HEALTHCHECK@2-2 [\"CMD-SHELL\", \"true\"]",
    );
}

#[test]
fn onbuild_wraps_a_trigger() {
    check(
        "ONBUILD RUN make",
        "ONBUILD@2-2 \"RUN make\" => RUN@2-2 shell[\"make\"]",
    );
    check(
        "ONBUILD COPY --from=x a /b",
        "ONBUILD@2-2 \"COPY --from=x a /b\" => COPY@2-2 [\"a\"] -> \"/b\" from=x",
    );
    check(
        "onbuild run <<EOF\necho hi\nEOF",
        "ONBUILD@2-4 \"run <<EOF\\necho hi\\nEOF\" => RUN@2-4 shell[\"<<EOF\"] file(EOF: \"echo hi\\n\")",
    );
}

#[test]
fn instructions_are_case_insensitive_and_spans_cover_continuations() {
    check(
        "run a \\\n b \\\n c\nuser x",
        "RUN@2-4 shell[\"a  b  c\"]\nUSER@5-5 x",
    );
}

#[test]
fn chmod_values_parse_after_expansion() {
    assert_eq!(
        kiln_frontend::instructions::parse_chmod("0755"),
        Ok(Chmod::Octal(0o755))
    );
    assert!(matches!(
        kiln_frontend::instructions::parse_chmod("a+rX"),
        Ok(Chmod::Symbolic(_))
    ));
}

#[test]
fn exposed_ports_parse_after_expansion() {
    use kiln_frontend::instructions::parse_exposed_port;
    assert_eq!(parse_exposed_port("8080"), Ok(vec!["8080/tcp".to_string()]));
    assert_eq!(
        parse_exposed_port("7000-7001/udp"),
        Ok(vec!["7000/udp".to_string(), "7001/udp".to_string()])
    );
    assert!(parse_exposed_port("80/http").is_err());
}
