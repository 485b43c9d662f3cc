//! `--change` instructions for `import` (as `docker import --change`): Dockerfile
//! instructions that set the image config, parsed with the frontend's parser.

use kiln_frontend::instructions::{parse_exposed_port, parse_instruction, Instruction, SourceFile};
use kiln_frontend::shell::Lexer;
use kiln_types::ImageSpec;

use crate::error::{ImageError, Result};

/// The instructions `--change` accepts (Docker's list).
pub const CHANGE_INSTRUCTIONS: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Applies `changes` in order to `image`'s config. Variables in values are expanded
/// against the environment the changes built so far, as in a Dockerfile.
pub fn apply_changes(image: &mut ImageSpec, changes: &[String]) -> Result<()> {
    let mut cmd_set = false;
    for change in changes {
        apply_change(image, change, &mut cmd_set)?;
    }
    Ok(())
}

fn apply_change(image: &mut ImageSpec, change: &str, cmd_set: &mut bool) -> Result<()> {
    let fail = |message: String| ImageError::Change {
        change: change.to_string(),
        message,
    };
    let text = change.trim();
    let dockerfile =
        kiln_frontend::parser::parse("--change", text).map_err(|error| fail(error.to_string()))?;
    let node = match dockerfile.nodes.as_slice() {
        [node] => node,
        [] => return Err(fail("empty change".into())),
        _ => return Err(fail("one instruction per --change".into())),
    };
    let keyword = node.keyword.to_ascii_uppercase();
    if !CHANGE_INSTRUCTIONS.contains(&keyword.as_str()) {
        return Err(fail(format!(
            "{keyword} is not a valid change command (allowed: {})",
            CHANGE_INSTRUCTIONS.join(", ")
        )));
    }
    let source = SourceFile::new("--change", text);
    let instruction = parse_instruction(&source, node).map_err(|error| fail(error.to_string()))?;
    let lexer = Lexer::new(kiln_frontend::parser::DEFAULT_ESCAPE);
    let environment: Vec<(String, String)> = image
        .config
        .env
        .iter()
        .flatten()
        .filter_map(|entry| entry.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let expand = |word: &str| -> Result<String> {
        lexer
            .process_word(word, &environment)
            .map(|processed| processed.result)
            .map_err(|error| fail(error.to_string()))
    };
    let config = &mut image.config;
    match instruction {
        Instruction::Cmd(cmd) => {
            config.cmd = Some(with_shell(config.shell.as_deref(), &cmd.command));
            *cmd_set = true;
        }
        Instruction::Entrypoint(entrypoint) => {
            config.entrypoint = Some(with_shell(config.shell.as_deref(), &entrypoint.command));
            if !*cmd_set {
                config.cmd = None;
            }
        }
        Instruction::Env(env) => {
            let mut expanded = Vec::new();
            for pair in &env.pairs {
                expanded.push((expand(&pair.key)?, expand(&pair.value)?));
            }
            let entries = config.env.get_or_insert_with(Vec::new);
            for (key, value) in expanded {
                let prefix = format!("{key}=");
                let entry = format!("{key}={value}");
                match entries
                    .iter_mut()
                    .find(|existing| existing.starts_with(&prefix))
                {
                    Some(existing) => *existing = entry,
                    None => entries.push(entry),
                }
            }
        }
        Instruction::Label(label) => {
            let mut expanded = Vec::new();
            for pair in &label.labels {
                expanded.push((expand(&pair.key)?, expand(&pair.value)?));
            }
            let labels = config.labels.get_or_insert_with(Default::default);
            labels.extend(expanded);
        }
        Instruction::Expose(expose) => {
            let mut specs = Vec::new();
            for port in &expose.ports {
                let words = lexer
                    .process_words(port, &environment)
                    .map_err(|error| fail(error.to_string()))?;
                for word in words {
                    specs.extend(parse_exposed_port(&word).map_err(&fail)?);
                }
            }
            let ports = config.exposed_ports.get_or_insert_with(Default::default);
            for spec in specs {
                ports.insert(spec, Default::default());
            }
        }
        Instruction::User(user) => config.user = Some(expand(&user.user)?),
        Instruction::Workdir(workdir) => {
            let path = expand(&workdir.path)?;
            let joined = if path.starts_with('/') {
                path
            } else {
                let current = config.working_dir.clone().unwrap_or_else(|| "/".into());
                format!("{}/{path}", current.trim_end_matches('/'))
            };
            config.working_dir = Some(joined);
        }
        Instruction::Volume(volume) => {
            let mut expanded = Vec::new();
            for path in &volume.volumes {
                let path = expand(path)?;
                if path.is_empty() {
                    return Err(fail("VOLUME specified can not be an empty string".into()));
                }
                expanded.push(path);
            }
            let volumes = config.volumes.get_or_insert_with(Default::default);
            for path in expanded {
                volumes.insert(path, Default::default());
            }
        }
        Instruction::StopSignal(signal) => config.stop_signal = Some(expand(&signal.signal)?),
        Instruction::Onbuild(onbuild) => config
            .on_build
            .get_or_insert_with(Vec::new)
            .push(onbuild.expression.clone()),
        Instruction::Healthcheck(healthcheck) => config.healthcheck = Some(healthcheck.health),
        other => {
            return Err(fail(format!(
                "{} is not a valid change command",
                other.keyword()
            )))
        }
    }
    Ok(())
}

/// Exec form as is; shell form behind the shell (`/bin/sh -c` unless the config has one).
fn with_shell(
    shell: Option<&[String]>,
    command: &kiln_frontend::instructions::CommandLine,
) -> Vec<String> {
    if !command.prepend_shell {
        return command.args.clone();
    }
    let mut argv: Vec<String> = match shell {
        Some(shell) if !shell.is_empty() => shell.to_vec(),
        _ => vec!["/bin/sh".into(), "-c".into()],
    };
    argv.push(command.args.join(" "));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(changes: &[&str]) -> ImageSpec {
        let mut image = ImageSpec::default();
        let changes: Vec<String> = changes.iter().map(|change| change.to_string()).collect();
        apply_changes(&mut image, &changes).unwrap();
        image
    }

    #[test]
    fn exec_and_shell_forms() {
        let image = check(&[r#"CMD ["/bin/sh", "-c", "echo hi"]"#]);
        assert_eq!(
            image.config.cmd,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        let image = check(&["CMD echo hi"]);
        assert_eq!(
            image.config.cmd,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
    }

    #[test]
    fn entrypoint_clears_an_inherited_cmd_only() {
        let image = check(&["CMD [\"a\"]", "ENTRYPOINT [\"b\"]"]);
        assert_eq!(image.config.cmd, Some(vec!["a".into()]));
        let mut image = ImageSpec::default();
        image.config.cmd = Some(vec!["old".into()]);
        apply_changes(&mut image, &["ENTRYPOINT [\"b\"]".to_string()]).unwrap();
        assert_eq!(image.config.cmd, None);
    }

    #[test]
    fn env_expands_and_replaces() {
        let image = check(&[
            "ENV PATH=/bin",
            "ENV PATH=/usr/bin:$PATH A=\"x y\"",
            "WORKDIR /app",
            "WORKDIR sub",
            "USER 1000:1000",
            "EXPOSE 80 53/udp",
            "LABEL a=b",
            "VOLUME /data",
            "STOPSIGNAL SIGTERM",
        ]);
        assert_eq!(
            image.config.env,
            Some(vec!["PATH=/usr/bin:/bin".into(), "A=x y".into()])
        );
        assert_eq!(image.config.working_dir.as_deref(), Some("/app/sub"));
        assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
        let ports: Vec<&String> = image
            .config
            .exposed_ports
            .as_ref()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(ports, ["53/udp", "80/tcp"]);
        assert_eq!(
            image.config.labels.unwrap().get("a").map(String::as_str),
            Some("b")
        );
        assert!(image.config.volumes.unwrap().contains_key("/data"));
        assert_eq!(image.config.stop_signal.as_deref(), Some("SIGTERM"));
    }

    #[test]
    fn build_instructions_are_refused() {
        for change in [
            "RUN true",
            "FROM busybox",
            "COPY a b",
            "",
            "CMD a\nRUN b",
            "BOGUS x",
        ] {
            let mut image = ImageSpec::default();
            let result = apply_changes(&mut image, &[change.to_string()]);
            assert!(result.is_err(), "{change:?} accepted");
        }
    }
}
