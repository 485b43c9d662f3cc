//! The conversion's view of an instruction: arguments unexpanded, flags read, heredocs attached.
//!
//! Built from the syntax tree (`ast::Node`); expansion happens later, at dispatch, against the
//! stage's environment of that moment, as BuildKit does.

use crate::ast::{Args, Heredoc, Node};

/// An instruction failure before dispatch; the caller adds the location.
pub(crate) type CommandResult<T> = Result<T, String>;

/// A stage: its `FROM` and the commands after it.
#[derive(Debug, Clone)]
pub(crate) struct StageDefinition {
    /// The `AS` name, lower case.
    pub name: Option<String>,
    /// The base as written (may contain `$ARG`).
    pub base: String,
    /// `--platform` as written.
    pub platform: Option<String>,
    pub commands: Vec<Command>,
    pub start_line: usize,
}

/// One instruction with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub kind: CommandKind,
    pub start_line: usize,
    pub end_line: usize,
    /// The instruction as written (BuildKit's `String()` of the command), for progress names.
    pub original: String,
    /// Whether it came from an ONBUILD trigger.
    pub from_onbuild: bool,
}

/// A shell-or-exec command line (RUN, CMD, ENTRYPOINT).
#[derive(Debug, Clone, Default)]
pub(crate) struct CommandLine {
    pub args: Vec<String>,
    /// Shell form: run through the stage's SHELL.
    pub prepend_shell: bool,
    pub heredocs: Vec<Heredoc>,
}

/// COPY and ADD.
#[derive(Debug, Clone, Default)]
pub(crate) struct CopyCommand {
    pub is_add: bool,
    pub sources: Vec<String>,
    /// Heredoc sources: (name, body, expand).
    pub contents: Vec<(String, String, bool)>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: String,
    pub chmod: String,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    pub checksum: String,
    pub keep_git_dir: Option<bool>,
    pub unpack: Option<bool>,
}

/// RUN.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunCommand {
    pub line: CommandLine,
    /// `--mount` values as written.
    pub mounts: Vec<String>,
    pub network: Option<String>,
    pub security: Option<String>,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthcheckCommand {
    /// `["NONE"]`, or `["CMD", args...]` / `["CMD-SHELL", line]`.
    pub test: Vec<String>,
    pub interval: Option<i64>,
    pub timeout: Option<i64>,
    pub start_period: Option<i64>,
    pub start_interval: Option<i64>,
    pub retries: Option<i64>,
}

#[derive(Debug, Clone)]
pub(crate) enum CommandKind {
    Arg(Vec<(String, Option<String>)>),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Maintainer(String),
    Workdir(String),
    User(String),
    StopSignal(String),
    Volume(Vec<String>),
    Expose(Vec<String>),
    Shell(Vec<String>),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Run(RunCommand),
    Copy(CopyCommand),
    Healthcheck(HealthcheckCommand),
    Onbuild(String),
}

/// The stages and the `ARG`s before the first `FROM` (with their lines).
pub(crate) struct ParsedStages {
    pub meta_args: Vec<(Vec<(String, Option<String>)>, usize)>,
    pub stages: Vec<StageDefinition>,
}

/// An error at a node's first line.
pub(crate) struct NodeError {
    pub line: usize,
    pub message: String,
}

/// Splits the syntax tree into stages of commands.
pub(crate) fn parse_stages(nodes: &[Node]) -> Result<ParsedStages, NodeError> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<StageDefinition> = Vec::new();
    for node in nodes {
        let error = |message: String| NodeError {
            line: node.start_line,
            message,
        };
        if node.keyword == "from" {
            stages.push(parse_from(node).map_err(error)?);
            continue;
        }
        let command = parse_command(node).map_err(error)?;
        match stages.last_mut() {
            Some(stage) => stage.commands.push(command),
            None => match command.kind {
                CommandKind::Arg(args) => meta_args.push((args, node.start_line)),
                _ => return Err(error("no build stage in current context".to_string())),
            },
        }
    }
    Ok(ParsedStages { meta_args, stages })
}

fn words(node: &Node) -> Vec<String> {
    match &node.args {
        Args::Words(words) => words.clone(),
        Args::Pairs(pairs) => pairs
            .iter()
            .map(|pair| format!("{}{}{}", pair.key, pair.separator, pair.value))
            .collect(),
        Args::Nested(_) => Vec::new(),
    }
}

/// Reads `--name=value` / `--name` flags against the allowed set.
struct Flags {
    values: Vec<(String, Option<String>)>,
}

impl Flags {
    fn parse(node: &Node, allowed: &[&str]) -> CommandResult<Flags> {
        let mut values = Vec::new();
        for flag in &node.flags {
            let Some(body) = flag.strip_prefix("--") else {
                return Err(format!("invalid flag {flag:?}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (body.to_string(), None),
            };
            if !allowed.contains(&name.as_str()) {
                let suggestion = crate::error::closest(&name, allowed.iter().copied())
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                return Err(format!("unknown flag: --{name}{suggestion}"));
            }
            values.push((name, value));
        }
        Ok(Flags { values })
    }

    fn string(&self, name: &str) -> CommandResult<Option<String>> {
        let mut found = None;
        for (flag, value) in &self.values {
            if flag == name {
                if found.is_some() {
                    return Err(format!("duplicate flag specified: --{name}"));
                }
                found = Some(value.clone().unwrap_or_default());
            }
        }
        Ok(found)
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(flag, _)| flag == name)
            .map(|(_, value)| value.clone().unwrap_or_default())
            .collect()
    }

    fn boolean(&self, name: &str) -> CommandResult<Option<bool>> {
        match self.string_any(name) {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(value)) => match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "t" => Ok(Some(true)),
                "false" | "0" | "f" => Ok(Some(false)),
                _ => Err(format!(
                    "expecting boolean value for flag {name}, not: {value}"
                )),
            },
        }
    }

    fn string_any(&self, name: &str) -> Option<Option<String>> {
        self.values
            .iter()
            .rev()
            .find(|(flag, _)| flag == name)
            .map(|(_, value)| value.clone())
    }
}

fn parse_from(node: &Node) -> CommandResult<StageDefinition> {
    let flags = Flags::parse(node, &["platform"])?;
    let args = words(node);
    let name = match args.len() {
        1 => None,
        3 if args[1].eq_ignore_ascii_case("as") => {
            let name = args[2].to_lowercase();
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(format!("invalid name for build stage: {:?}, name can't start with a number or contain symbols", args[2]));
            }
            Some(name)
        }
        _ => return Err("FROM requires either one or three arguments".to_string()),
    };
    Ok(StageDefinition {
        name,
        base: args[0].clone(),
        platform: flags.string("platform")?.filter(|p| !p.is_empty()),
        commands: Vec::new(),
        start_line: node.start_line,
    })
}

fn key_values(node: &Node, instruction: &str) -> CommandResult<Vec<(String, String)>> {
    match &node.args {
        Args::Pairs(pairs) if !pairs.is_empty() => Ok(pairs
            .iter()
            .map(|pair| (pair.key.clone(), pair.value.clone()))
            .collect()),
        _ => Err(format!("{instruction} requires at least one argument")),
    }
}

fn command_line(node: &Node) -> CommandLine {
    let args = words(node);
    CommandLine {
        args,
        prepend_shell: !node.json_form,
        heredocs: node.heredocs.clone(),
    }
}

fn exactly_one(node: &Node, instruction: &str) -> CommandResult<String> {
    let args = words(node);
    if args.len() != 1 {
        return Err(format!("{instruction} requires exactly one argument"));
    }
    Ok(args[0].clone())
}

fn parse_duration_flag(flags: &Flags, name: &str) -> CommandResult<Option<i64>> {
    let Some(value) = flags.string(name)? else {
        return Ok(None);
    };
    if value.is_empty() {
        return Ok(None);
    }
    let nanoseconds = crate::instructions::values::parse_go_duration(&value)?;
    if nanoseconds != 0 && nanoseconds < 1_000_000 {
        return Err(format!("Interval {name:?} cannot be less than 1ms"));
    }
    if nanoseconds < 0 {
        return Err(format!("Interval {name:?} cannot be negative"));
    }
    Ok(Some(nanoseconds))
}

/// One instruction other than FROM.
pub(crate) fn parse_command(node: &Node) -> CommandResult<Command> {
    let allowed: &[&str] = match node.keyword.as_str() {
        "copy" => &["from", "chown", "chmod", "link", "parents", "exclude"],
        "add" => &[
            "chown",
            "chmod",
            "link",
            "exclude",
            "checksum",
            "keep-git-dir",
            "unpack",
        ],
        "run" => &["mount", "network", "security"],
        "healthcheck" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    };
    let flags = Flags::parse(node, allowed)?;
    let kind = match node.keyword.as_str() {
        "arg" => {
            let args = words(node);
            if args.is_empty() {
                return Err("ARG requires at least one argument".into());
            }
            let mut pairs = Vec::new();
            for arg in args {
                match arg.split_once('=') {
                    Some((key, value)) => pairs.push((key.to_string(), Some(value.to_string()))),
                    None => pairs.push((arg, None)),
                }
            }
            CommandKind::Arg(pairs)
        }
        "env" => CommandKind::Env(key_values(node, "ENV")?),
        "label" => CommandKind::Label(key_values(node, "LABEL")?),
        "maintainer" => CommandKind::Maintainer(exactly_one(node, "MAINTAINER")?),
        "workdir" => CommandKind::Workdir(exactly_one(node, "WORKDIR")?),
        "user" => CommandKind::User(exactly_one(node, "USER")?),
        "stopsignal" => CommandKind::StopSignal(exactly_one(node, "STOPSIGNAL")?),
        "volume" => {
            let args = words(node);
            if args.is_empty() {
                return Err("VOLUME requires at least one argument".into());
            }
            CommandKind::Volume(args)
        }
        "expose" => {
            let args = words(node);
            if args.is_empty() {
                return Err("EXPOSE requires at least one argument".into());
            }
            CommandKind::Expose(args)
        }
        "shell" => {
            if !node.json_form {
                return Err("SHELL requires the arguments to be in JSON form".into());
            }
            let args = words(node);
            if args.is_empty() {
                return Err("SHELL requires at least one argument".into());
            }
            CommandKind::Shell(args)
        }
        "cmd" => CommandKind::Cmd(command_line(node)),
        "entrypoint" => CommandKind::Entrypoint(command_line(node)),
        "run" => {
            let line = command_line(node);
            if line.args.is_empty() && line.heredocs.is_empty() {
                return Err("RUN requires at least one argument".into());
            }
            CommandKind::Run(RunCommand {
                line,
                mounts: flags.strings("mount"),
                network: flags.string("network")?,
                security: flags.string("security")?,
            })
        }
        "copy" | "add" => {
            let is_add = node.keyword == "add";
            let name = if is_add { "ADD" } else { "COPY" };
            let mut args = words(node);
            if args.len() < 2 {
                return Err(format!("{name} requires at least two arguments, but only one was provided. Destination could not be determined"));
            }
            let dest = args.pop().unwrap_or_default();
            let mut sources = Vec::new();
            let mut contents = Vec::new();
            for source in args {
                match heredoc_name(&source)
                    .and_then(|name| node.heredocs.iter().find(|h| h.name == name))
                {
                    Some(heredoc) => contents.push((
                        heredoc.name.clone(),
                        heredoc.content.clone(),
                        heredoc.expand,
                    )),
                    None => sources.push(source),
                }
            }
            CopyCommand {
                is_add,
                sources,
                contents,
                dest,
                from: if is_add { None } else { flags.string("from")? },
                chown: flags.string("chown")?.unwrap_or_default(),
                chmod: flags.string("chmod")?.unwrap_or_default(),
                link: flags.boolean("link")?.unwrap_or(false),
                parents: if is_add {
                    false
                } else {
                    flags.boolean("parents")?.unwrap_or(false)
                },
                excludes: flags.strings("exclude"),
                checksum: if is_add {
                    flags.string("checksum")?.unwrap_or_default()
                } else {
                    String::new()
                },
                keep_git_dir: if is_add {
                    flags.boolean("keep-git-dir")?
                } else {
                    None
                },
                unpack: if is_add {
                    flags.boolean("unpack")?
                } else {
                    None
                },
            }
            .into()
        }
        "healthcheck" => CommandKind::Healthcheck(parse_healthcheck(node, &flags)?),
        "onbuild" => {
            let Args::Nested(inner) = &node.args else {
                return Err("ONBUILD requires at least one argument".into());
            };
            match inner.keyword.as_str() {
                "onbuild" => {
                    return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into())
                }
                "from" | "maintainer" => {
                    return Err(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        inner.keyword.to_uppercase()
                    ))
                }
                _ => {}
            }
            parse_command(inner)?;
            let original = inner.original.trim();
            CommandKind::Onbuild(original.to_string())
        }
        other => {
            let suggestion =
                crate::error::closest(other, crate::parser::KNOWN_INSTRUCTIONS.iter().copied())
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
            return Err(format!(
                "unknown instruction: {}{suggestion}",
                other.to_uppercase()
            ));
        }
    };
    Ok(Command {
        kind,
        start_line: node.start_line,
        end_line: node.end_line,
        original: node.original.trim().to_string(),
        from_onbuild: false,
    })
}

impl From<CopyCommand> for CommandKind {
    fn from(copy: CopyCommand) -> Self {
        CommandKind::Copy(copy)
    }
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"` -> `EOF`.
fn heredoc_name(word: &str) -> Option<String> {
    let rest = word.strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let name = rest.trim_matches(|c| c == '"' || c == '\'');
    (!name.is_empty()).then(|| name.to_string())
}

fn parse_healthcheck(node: &Node, flags: &Flags) -> CommandResult<HealthcheckCommand> {
    let args = words(node);
    let Some(first) = args.first() else {
        return Err("HEALTHCHECK requires an argument".into());
    };
    let kind = first.to_uppercase();
    if kind == "NONE" {
        if args.len() != 1 {
            return Err("HEALTHCHECK NONE takes no arguments".into());
        }
        if !node.flags.is_empty() {
            return Err("HEALTHCHECK NONE takes no options".into());
        }
        return Ok(HealthcheckCommand {
            test: vec!["NONE".into()],
            ..Default::default()
        });
    }
    if kind != "CMD" {
        return Err(format!("Unknown type {kind:?} in HEALTHCHECK (try CMD)"));
    }
    let rest = &args[1..];
    let test = if rest.is_empty() {
        return Err("Missing command after HEALTHCHECK CMD".into());
    } else if node.json_form {
        let mut test = vec!["CMD".to_string()];
        test.extend(rest.iter().cloned());
        test
    } else {
        vec!["CMD-SHELL".to_string(), rest.join(" ")]
    };
    let retries = match flags.string("retries")? {
        Some(value) if !value.is_empty() => {
            let retries: i64 = value
                .parse()
                .map_err(|_| format!("invalid retries value {value:?}"))?;
            if retries < 0 {
                return Err("--retries cannot be negative".into());
            }
            Some(retries)
        }
        _ => None,
    };
    Ok(HealthcheckCommand {
        test,
        interval: parse_duration_flag(flags, "interval")?,
        timeout: parse_duration_flag(flags, "timeout")?,
        start_period: parse_duration_flag(flags, "start-period")?,
        start_interval: parse_duration_flag(flags, "start-interval")?,
        retries,
    })
}
