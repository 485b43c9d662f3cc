//! Typed instructions: each syntax-tree [`Node`] becomes an [`Instruction`] with typed, validated
//! fields, and the instructions are grouped into build [`Stage`]s (BuildKit's
//! `frontend/dockerfile/instructions`).
//!
//! Values that BuildKit expands with the stage's ENV and ARGs before using them (image names,
//! paths, `--chown`, `--chmod`, `--mount`, ...) are kept as written; where a value also needs
//! parsing after expansion this module offers the parser ([`parse_mounts`], [`parse_chmod`],
//! [`parse_exposed_port`]) and checks at parse time whatever it can without expanding.

mod flags;
pub mod mount;
mod stages;
pub mod values;

use kiln_types::HealthConfig;

use crate::ast::{Args, Node};
use crate::error::{closest, Error, Location};
use flags::{parse_flags, FlagError, FlagKind};

pub use mount::{parse_mount, parse_mounts, CacheSharing, Mount, MountError, MountType};
pub use stages::{find_stage, parse_stages, resolve_target, Stage};
pub use values::{parse_chmod, parse_exposed_port, parse_go_duration, Chmod, ChmodClause};

/// The Dockerfile's name and text, to name and quote lines in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    name: String,
    text: String,
    /// Where each line starts in `text`.
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// `name` is the file as the user gave it (`Dockerfile`, `-`), `text` its whole content.
    pub fn new(name: &str, text: &str) -> SourceFile {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(index, _)| index + 1))
            .collect();
        SourceFile {
            name: name.to_string(),
            text: text.to_string(),
            line_starts,
        }
    }

    /// The file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text of a 1-based line (without its line ending), empty when out of range.
    pub fn line_text(&self, line: usize) -> &str {
        let Some(&start) = line
            .checked_sub(1)
            .and_then(|index| self.line_starts.get(index))
        else {
            return "";
        };
        let rest = &self.text[start..];
        let line_text = rest.split('\n').next().unwrap_or_default();
        line_text.strip_suffix('\r').unwrap_or(line_text)
    }

    /// A location at a line and column.
    pub fn location(&self, line: usize, column: usize) -> Location {
        Location {
            file: self.name.clone(),
            line,
            column,
            line_text: self.line_text(line).to_string(),
        }
    }

    /// The location of an instruction: its first line, at its first non-blank character.
    pub fn span_location(&self, span: &Span) -> Location {
        let text = self.line_text(span.start_line);
        let column = text
            .chars()
            .position(|character| !character.is_whitespace())
            .map_or(1, |index| index + 1);
        self.location(span.start_line, column)
    }

    /// The location of `needle` within the instruction's lines, or the instruction's location.
    pub fn find_in_span(&self, span: &Span, needle: &str) -> Location {
        if !needle.is_empty() {
            for line in span.start_line..=span.end_line.max(span.start_line) {
                if let Some(byte_index) = self.line_text(line).find(needle) {
                    let column = self.line_text(line)[..byte_index].chars().count() + 1;
                    return self.location(line, column);
                }
            }
        }
        self.span_location(span)
    }

    /// An error about an instruction, located at its first line.
    pub fn error_at(&self, span: &Span, message: impl Into<String>) -> Error {
        Error::new(self.span_location(span), message)
    }

    /// An error about a mount value of a RUN (after expansion), for the converter.
    pub fn mount_error(&self, span: &Span, raw_value: &str, error: &MountError) -> Error {
        Error::new(self.find_in_span(span, raw_value), error.to_string())
            .with_suggestion(error.suggestion().map(str::to_string))
    }
}

/// Where an instruction is and what it said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Span {
    /// First and last line (1-based, inclusive; heredoc bodies included).
    pub start_line: usize,
    pub end_line: usize,
    /// The instruction as written, continuations joined, trimmed (BuildKit's `String()`).
    pub original: String,
}

impl Span {
    fn of(node: &Node) -> Span {
        Span {
            start_line: node.start_line,
            end_line: node.end_line.max(node.start_line),
            original: node.original.trim().to_string(),
        }
    }
}

/// A typed instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From(FromInstruction),
    Run(RunInstruction),
    Cmd(CmdInstruction),
    Label(LabelInstruction),
    Maintainer(MaintainerInstruction),
    Expose(ExposeInstruction),
    Env(EnvInstruction),
    Add(AddInstruction),
    Copy(CopyInstruction),
    Entrypoint(EntrypointInstruction),
    Volume(VolumeInstruction),
    User(UserInstruction),
    Workdir(WorkdirInstruction),
    Arg(ArgInstruction),
    Onbuild(OnbuildInstruction),
    StopSignal(StopSignalInstruction),
    Healthcheck(HealthcheckInstruction),
    Shell(ShellInstruction),
}

/// Instruction keywords, upper case, in the order of the enum.
pub const INSTRUCTION_NAMES: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

impl Instruction {
    /// Where the instruction is and its text.
    pub fn span(&self) -> &Span {
        match self {
            Instruction::From(instruction) => &instruction.span,
            Instruction::Run(instruction) => &instruction.span,
            Instruction::Cmd(instruction) => &instruction.span,
            Instruction::Label(instruction) => &instruction.span,
            Instruction::Maintainer(instruction) => &instruction.span,
            Instruction::Expose(instruction) => &instruction.span,
            Instruction::Env(instruction) => &instruction.span,
            Instruction::Add(instruction) => &instruction.span,
            Instruction::Copy(instruction) => &instruction.span,
            Instruction::Entrypoint(instruction) => &instruction.span,
            Instruction::Volume(instruction) => &instruction.span,
            Instruction::User(instruction) => &instruction.span,
            Instruction::Workdir(instruction) => &instruction.span,
            Instruction::Arg(instruction) => &instruction.span,
            Instruction::Onbuild(instruction) => &instruction.span,
            Instruction::StopSignal(instruction) => &instruction.span,
            Instruction::Healthcheck(instruction) => &instruction.span,
            Instruction::Shell(instruction) => &instruction.span,
        }
    }

    /// The keyword, upper case (`RUN`).
    pub fn keyword(&self) -> &'static str {
        let index = match self {
            Instruction::From(_) => 0,
            Instruction::Run(_) => 1,
            Instruction::Cmd(_) => 2,
            Instruction::Label(_) => 3,
            Instruction::Maintainer(_) => 4,
            Instruction::Expose(_) => 5,
            Instruction::Env(_) => 6,
            Instruction::Add(_) => 7,
            Instruction::Copy(_) => 8,
            Instruction::Entrypoint(_) => 9,
            Instruction::Volume(_) => 10,
            Instruction::User(_) => 11,
            Instruction::Workdir(_) => 12,
            Instruction::Arg(_) => 13,
            Instruction::Onbuild(_) => 14,
            Instruction::StopSignal(_) => 15,
            Instruction::Healthcheck(_) => 16,
            Instruction::Shell(_) => 17,
        };
        INSTRUCTION_NAMES[index]
    }
}

/// `FROM [--platform=p] image [AS name]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromInstruction {
    pub span: Span,
    /// The base: an image reference, a stage name or `scratch`, unexpanded.
    pub image: String,
    /// The stage name, lower case.
    pub name: Option<String>,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
}

/// A command in shell form (run through the SHELL) or JSON (exec) form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandLine {
    /// Shell form: one string, the command text; exec form: the argv.
    pub args: Vec<String>,
    /// True for the shell form: the stage's SHELL (default `/bin/sh -c`) goes in front.
    pub prepend_shell: bool,
    /// Heredoc bodies of the instruction (`RUN <<EOF`).
    pub files: Vec<InlineFile>,
}

/// A heredoc attached to RUN, CMD or ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    pub name: String,
    pub data: String,
    /// Leading tabs were stripped (`<<-`).
    pub chomp: bool,
    /// Variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
}

/// RUN's network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    #[default]
    Default,
    None,
    Host,
}

/// RUN's security mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityMode {
    #[default]
    Sandbox,
    Insecure,
}

/// `RUN [--mount=...]... [--network=...] [--security=...] command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstruction {
    pub span: Span,
    pub command: CommandLine,
    /// The `--mount` values as written (may hold `$VAR`): expand, then [`parse_mounts`].
    pub mounts: Vec<String>,
    pub network: NetworkMode,
    pub security: SecurityMode,
    /// Names of the flags given, in order.
    pub flags_used: Vec<String>,
}

impl RunInstruction {
    /// The mounts read without expanding anything (right when no value holds `$`).
    pub fn mounts_unexpanded(&self) -> Result<Vec<Mount>, MountError> {
        parse_mounts(&self.mounts)
    }
}

/// `CMD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdInstruction {
    pub span: Span,
    pub command: CommandLine,
}

/// `ENTRYPOINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrypointInstruction {
    pub span: Span,
    pub command: CommandLine,
}

/// One `key=value` of ENV or LABEL, unexpanded (quotes kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValuePair {
    pub key: String,
    pub value: String,
    /// Written in the old `ENV key value` form.
    pub no_delimiter: bool,
}

/// `LABEL key=value...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelInstruction {
    pub span: Span,
    pub labels: Vec<KeyValuePair>,
}

/// `ENV key=value...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvInstruction {
    pub span: Span,
    pub pairs: Vec<KeyValuePair>,
}

/// `MAINTAINER name` (deprecated; becomes the image's author).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintainerInstruction {
    pub span: Span,
    pub maintainer: String,
}

/// `EXPOSE port...`: specs as written, sorted; [`parse_exposed_port`] after expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeInstruction {
    pub span: Span,
    pub ports: Vec<String>,
}

/// Sources and destination of COPY and ADD, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourcesAndDest {
    pub sources: Vec<String>,
    /// Heredoc sources (`COPY <<EOF /dest`), in order.
    pub contents: Vec<SourceContent>,
    pub dest: String,
}

/// A heredoc used as a COPY/ADD source: a file named `path` holding `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    pub path: String,
    pub data: String,
    /// Variables in the body are expanded (the delimiter was not quoted).
    pub expand: bool,
}

/// `COPY [--from] [--chown] [--chmod] [--link] [--parents] [--exclude]... src... dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInstruction {
    pub span: Span,
    pub files: SourcesAndDest,
    /// `--from`: a stage name, stage index or image, unexpanded.
    pub from: Option<String>,
    pub chown: Option<String>,
    /// `--chmod` as written: [`parse_chmod`] after expansion (checked here when it has no `$`).
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    /// `--exclude` patterns (a [`PatternMatcher`](crate::dockerignore::PatternMatcher) list).
    pub excludes: Vec<String>,
}

/// `ADD [--chown] [--chmod] [--link] [--keep-git-dir] [--checksum] [--unpack] [--exclude]... src... dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddInstruction {
    pub span: Span,
    pub files: SourcesAndDest,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    /// `--keep-git-dir`, when given.
    pub keep_git_dir: Option<bool>,
    /// `--checksum=sha256:...`, unexpanded.
    pub checksum: Option<String>,
    /// `--unpack`, when given (default: unpack local archives, not remote ones).
    pub unpack: Option<bool>,
    pub excludes: Vec<String>,
}

/// `VOLUME path...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInstruction {
    pub span: Span,
    pub volumes: Vec<String>,
}

/// `USER user[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInstruction {
    pub span: Span,
    pub user: String,
}

/// `WORKDIR path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkdirInstruction {
    pub span: Span,
    pub path: String,
}

/// One `name[=default]` of ARG, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDefinition {
    pub name: String,
    pub default: Option<String>,
}

/// `ARG name[=default]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgInstruction {
    pub span: Span,
    pub args: Vec<ArgDefinition>,
}

/// `ONBUILD instruction`: recorded in the image for builds that use it as a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnbuildInstruction {
    pub span: Span,
    /// The trigger's text as stored in the image config's `OnBuild` (heredocs appended).
    pub expression: String,
    /// The trigger, parsed (and so validated).
    pub trigger: Box<Instruction>,
}

/// `STOPSIGNAL signal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopSignalInstruction {
    pub span: Span,
    pub signal: String,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval ...] CMD command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckInstruction {
    pub span: Span,
    /// As stored in the image config: `Test` is `["NONE"]`, `["CMD", argv...]` or
    /// `["CMD-SHELL", command]`; durations in nanoseconds, zero ones left out.
    pub health: HealthConfig,
}

/// `SHELL ["executable", "parameters"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellInstruction {
    pub span: Span,
    pub shell: Vec<String>,
}

/// What an instruction parser has at hand.
struct Request<'a> {
    source: &'a SourceFile,
    node: &'a Node,
}

impl Request<'_> {
    /// The instruction's span, made when needed (it copies the instruction's text).
    fn span(&self) -> Span {
        Span::of(self.node)
    }

    /// The keyword upper case, for messages.
    fn name(&self) -> String {
        self.node.keyword.to_ascii_uppercase()
    }

    fn error(&self, message: impl Into<String>) -> Error {
        self.source.error_at(&self.span(), message)
    }

    fn error_near(&self, needle: &str, message: impl Into<String>) -> Error {
        Error::new(self.source.find_in_span(&self.span(), needle), message)
    }

    fn flag_error(&self, error: FlagError) -> Error {
        Error::new(
            self.source.find_in_span(&self.span(), &error.flag),
            error.message,
        )
        .with_suggestion(error.suggestion)
    }

    fn flags(&self, accepted: &[(&'static str, FlagKind)]) -> Result<flags::ParsedFlags, Error> {
        parse_flags(accepted, &self.node.flags).map_err(|error| self.flag_error(error))
    }

    /// The arguments as a list of words.
    fn words(&self) -> Vec<String> {
        match &self.node.args {
            Args::Words(words) => words.clone(),
            Args::Pairs(pairs) => pairs
                .iter()
                .map(|pair| {
                    if pair.separator.is_empty() {
                        pair.key.clone()
                    } else {
                        format!("{}={}", pair.key, pair.value)
                    }
                })
                .collect(),
            Args::Nested(_) => Vec::new(),
        }
    }

    /// The single argument of USER, WORKDIR, MAINTAINER, STOPSIGNAL.
    fn exactly_one(&self) -> Result<String, Error> {
        if let Args::Words(words) = &self.node.args {
            // The common case, without copying the list first.
            if let [one] = words.as_slice() {
                if !one.trim().is_empty() {
                    return Ok(one.clone());
                }
            }
        }
        match self.words().as_slice() {
            [one] if !one.trim().is_empty() => Ok(one.clone()),
            _ => Err(self.error(format!("{} requires exactly one argument", self.name()))),
        }
    }

    fn command_line(&self, empty_as_nothing: bool) -> CommandLine {
        let words = self.words();
        let mut args = if self.node.json_form || words.is_empty() {
            words
        } else {
            vec![words.join(" ")]
        };
        if empty_as_nothing && args.is_empty() {
            args = Vec::new();
        }
        let files = self
            .node
            .heredocs
            .iter()
            .map(|heredoc| InlineFile {
                name: heredoc.name.clone(),
                data: heredoc.content.clone(),
                chomp: heredoc.chomp,
                expand: heredoc.expand,
            })
            .collect();
        CommandLine {
            args,
            prepend_shell: !self.node.json_form,
            files,
        }
    }
}

/// Parses one node into a typed instruction.
pub fn parse_instruction(source: &SourceFile, node: &Node) -> Result<Instruction, Error> {
    // The parser gives keywords lower case; a node made otherwise is lowered here.
    let keyword: std::borrow::Cow<str> = if node.keyword.bytes().any(|b| b.is_ascii_uppercase()) {
        node.keyword.to_ascii_lowercase().into()
    } else {
        node.keyword.as_str().into()
    };
    let request = Request { source, node };
    let no_flags: &[(&'static str, FlagKind)] = &[];
    Ok(match &*keyword {
        "from" => Instruction::From(parse_from(&request)?),
        "run" => Instruction::Run(parse_run(&request)?),
        "cmd" => {
            request.flags(no_flags)?;
            Instruction::Cmd(CmdInstruction {
                command: request.command_line(false),
                span: request.span(),
            })
        }
        "entrypoint" => {
            request.flags(no_flags)?;
            Instruction::Entrypoint(EntrypointInstruction {
                command: request.command_line(true),
                span: request.span(),
            })
        }
        "label" => {
            request.flags(no_flags)?;
            Instruction::Label(LabelInstruction {
                labels: parse_pairs(&request)?,
                span: request.span(),
            })
        }
        "env" => {
            request.flags(no_flags)?;
            Instruction::Env(EnvInstruction {
                pairs: parse_pairs(&request)?,
                span: request.span(),
            })
        }
        "maintainer" => {
            let maintainer = request.exactly_one()?;
            request.flags(no_flags)?;
            Instruction::Maintainer(MaintainerInstruction {
                maintainer,
                span: request.span(),
            })
        }
        "expose" => {
            let mut ports = request.words();
            if ports.is_empty() {
                return Err(request.error("EXPOSE requires at least one argument"));
            }
            request.flags(no_flags)?;
            ports.sort();
            Instruction::Expose(ExposeInstruction {
                ports,
                span: request.span(),
            })
        }
        "add" => Instruction::Add(parse_add(&request)?),
        "copy" => Instruction::Copy(parse_copy(&request)?),
        "volume" => {
            let words = request.words();
            if words.is_empty() {
                return Err(request.error("VOLUME requires at least one argument"));
            }
            request.flags(no_flags)?;
            let mut volumes = Vec::with_capacity(words.len());
            for volume in words {
                let volume = volume.trim();
                if volume.is_empty() {
                    return Err(request.error("VOLUME specified can not be an empty string"));
                }
                volumes.push(volume.to_string());
            }
            Instruction::Volume(VolumeInstruction {
                volumes,
                span: request.span(),
            })
        }
        "user" => {
            let user = request.exactly_one()?;
            request.flags(no_flags)?;
            Instruction::User(UserInstruction {
                user,
                span: request.span(),
            })
        }
        "workdir" => {
            let path = request.exactly_one()?;
            request.flags(no_flags)?;
            Instruction::Workdir(WorkdirInstruction {
                path,
                span: request.span(),
            })
        }
        "arg" => Instruction::Arg(parse_arg(&request)?),
        "onbuild" => Instruction::Onbuild(parse_onbuild(&request)?),
        "stopsignal" => {
            let signal = request.exactly_one()?;
            request.flags(no_flags)?;
            Instruction::StopSignal(StopSignalInstruction {
                signal,
                span: request.span(),
            })
        }
        "healthcheck" => Instruction::Healthcheck(parse_healthcheck(&request)?),
        "shell" => {
            request.flags(no_flags)?;
            let shell = request.words();
            if shell.is_empty()
                || (!node.json_form && shell.iter().all(|word| word.trim().is_empty()))
            {
                return Err(request.error("SHELL requires at least one argument"));
            }
            if !node.json_form {
                return Err(request.error("SHELL requires the arguments to be in JSON form"));
            }
            Instruction::Shell(ShellInstruction {
                shell,
                span: request.span(),
            })
        }
        _ => {
            let written = node
                .original
                .split_whitespace()
                .next()
                .filter(|word| word.eq_ignore_ascii_case(&node.keyword))
                .unwrap_or(&node.keyword)
                .to_string();
            let suggestion = closest(&keyword, INSTRUCTION_NAMES);
            return Err(request
                .error(format!("unknown instruction: {written}"))
                .with_suggestion(suggestion));
        }
    })
}

fn parse_from(request: &Request) -> Result<FromInstruction, Error> {
    let words = request.words();
    let name = match words.as_slice() {
        [_] => None,
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            let lower = name.to_ascii_lowercase();
            if !is_valid_stage_name(&lower) {
                return Err(request.error_near(
                    name,
                    format!("invalid name for build stage: {name:?}, name can't start with a number or contain symbols"),
                ));
            }
            Some(lower)
        }
        _ => return Err(request.error("FROM requires either one or three arguments")),
    };
    let flags = request.flags(&[("platform", FlagKind::String)])?;
    Ok(FromInstruction {
        span: request.span(),
        image: words.first().cloned().unwrap_or_default(),
        name,
        platform: flags.string("platform"),
    })
}

/// BuildKit's stage name rule: `^[a-z][a-z0-9-_.]*$`.
pub fn is_valid_stage_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_lowercase())
        && characters.all(|character| {
            character.is_ascii_lowercase()
                || character.is_ascii_digit()
                || "-_.".contains(character)
        })
}

fn parse_run(request: &Request) -> Result<RunInstruction, Error> {
    let flags = request.flags(&[
        ("mount", FlagKind::Strings),
        ("network", FlagKind::String),
        ("security", FlagKind::String),
    ])?;
    let mounts = flags.strings("mount");
    for raw in &mounts {
        if let Err(error) = mount::check_raw_mount(raw) {
            return Err(request.source.mount_error(&request.span(), raw, &error));
        }
    }
    let network = match flags.string("network").as_deref() {
        None | Some("default") => NetworkMode::Default,
        Some("none") => NetworkMode::None,
        Some("host") => NetworkMode::Host,
        Some(other) => {
            return Err(request
                .error_near("--network", format!("invalid network mode {other:?}"))
                .with_suggestion(closest(other, ["default", "none", "host"])))
        }
    };
    let security = match flags.string("security").as_deref() {
        None | Some("sandbox") => SecurityMode::Sandbox,
        Some("insecure") => SecurityMode::Insecure,
        Some(other) => {
            return Err(request
                .error_near("--security", format!("security {other:?} is not valid"))
                .with_suggestion(closest(other, ["sandbox", "insecure"])))
        }
    };
    Ok(RunInstruction {
        span: request.span(),
        command: request.command_line(false),
        mounts,
        network,
        security,
        flags_used: flags.used.iter().map(|name| name.to_string()).collect(),
    })
}

fn parse_pairs(request: &Request) -> Result<Vec<KeyValuePair>, Error> {
    let name = request.name();
    let pairs: Vec<KeyValuePair> = match &request.node.args {
        Args::Pairs(pairs) => pairs
            .iter()
            .map(|pair| KeyValuePair {
                key: pair.key.clone(),
                value: pair.value.clone(),
                no_delimiter: pair.separator.is_empty(),
            })
            .collect(),
        Args::Words(words) => pairs_from_words(words),
        Args::Nested(_) => Vec::new(),
    };
    if pairs.is_empty() {
        return Err(request.error(format!("{name} requires at least one argument")));
    }
    for pair in &pairs {
        if pair.key.is_empty() {
            return Err(request.error(format!("{name} names can not be blank")));
        }
        if pair.no_delimiter && pair.value.is_empty() {
            return Err(request.error_near(&pair.key, format!("{name} must have two arguments")));
        }
    }
    Ok(pairs)
}

/// ENV/LABEL given as plain words: the old `key value...` form, or `key=value` words.
fn pairs_from_words(words: &[String]) -> Vec<KeyValuePair> {
    let Some(first) = words.first() else {
        return Vec::new();
    };
    if !first.contains('=') {
        let (key, value) = if words.len() == 1 {
            match first.split_once(char::is_whitespace) {
                Some((key, value)) => (key.to_string(), value.trim().to_string()),
                None => (first.clone(), String::new()),
            }
        } else {
            (first.clone(), words[1..].join(" "))
        };
        return vec![KeyValuePair {
            key,
            value,
            no_delimiter: true,
        }];
    }
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) => KeyValuePair {
                key: key.to_string(),
                value: value.to_string(),
                no_delimiter: false,
            },
            None => KeyValuePair {
                key: word.clone(),
                value: String::new(),
                no_delimiter: true,
            },
        })
        .collect()
}

fn parse_sources_and_dest(request: &Request) -> Result<SourcesAndDest, Error> {
    let words = request.words();
    let Some((dest, sources)) = words.split_last() else {
        return Err(request.error(no_destination(&request.name())));
    };
    if sources.is_empty() {
        return Err(request.error(no_destination(&request.name())));
    }
    let json = request.node.json_form;
    if !json && values::heredoc_marker_name(dest).is_some() {
        return Err(request.error(format!(
            "{} cannot accept a heredoc as a destination",
            request.name()
        )));
    }
    let mut files = SourcesAndDest {
        dest: dest.clone(),
        ..SourcesAndDest::default()
    };
    for source in sources {
        match values::heredoc_marker_name(source).filter(|_| !json) {
            Some(name) => {
                let heredoc = request
                    .node
                    .heredocs
                    .iter()
                    .find(|heredoc| heredoc.name == name);
                files.contents.push(SourceContent {
                    path: name,
                    data: heredoc
                        .map(|heredoc| heredoc.content.clone())
                        .unwrap_or_default(),
                    expand: heredoc.is_none_or(|heredoc| heredoc.expand),
                });
            }
            None => files.sources.push(source.clone()),
        }
    }
    Ok(files)
}

fn no_destination(name: &str) -> String {
    format!("{name} requires at least two arguments, but only one was provided. Destination could not be determined")
}

/// Checks `--chmod` and `--exclude` values that hold no variable.
fn check_copy_values(
    request: &Request,
    chmod: &Option<String>,
    excludes: &[String],
) -> Result<(), Error> {
    if let Some(chmod) = chmod.as_deref().filter(|chmod| !chmod.contains('$')) {
        if let Err(message) = parse_chmod(chmod) {
            return Err(request.error_near("--chmod", message));
        }
    }
    for exclude in excludes.iter().filter(|exclude| !exclude.contains('$')) {
        if let Err(error) = crate::dockerignore::Pattern::new(exclude) {
            return Err(request.error_near(exclude, format!("invalid --exclude pattern: {error}")));
        }
    }
    Ok(())
}

fn parse_copy(request: &Request) -> Result<CopyInstruction, Error> {
    if request.words().len() < 2 {
        return Err(request.error(no_destination("COPY")));
    }
    let flags = request.flags(&[
        ("chown", FlagKind::String),
        ("from", FlagKind::String),
        ("chmod", FlagKind::String),
        ("link", FlagKind::Bool),
        ("exclude", FlagKind::Strings),
        ("parents", FlagKind::Bool),
    ])?;
    let files = parse_sources_and_dest(request)?;
    let chmod = flags.string("chmod").filter(|chmod| !chmod.is_empty());
    let excludes = flags.strings("exclude");
    check_copy_values(request, &chmod, &excludes)?;
    Ok(CopyInstruction {
        span: request.span(),
        files,
        from: flags.string("from").filter(|from| !from.is_empty()),
        chown: flags.string("chown").filter(|chown| !chown.is_empty()),
        chmod,
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        excludes,
    })
}

fn parse_add(request: &Request) -> Result<AddInstruction, Error> {
    if request.words().len() < 2 {
        return Err(request.error(no_destination("ADD")));
    }
    let flags = request.flags(&[
        ("chown", FlagKind::String),
        ("chmod", FlagKind::String),
        ("link", FlagKind::Bool),
        ("keep-git-dir", FlagKind::Bool),
        ("checksum", FlagKind::String),
        ("unpack", FlagKind::Bool),
        ("exclude", FlagKind::Strings),
    ])?;
    let files = parse_sources_and_dest(request)?;
    let chmod = flags.string("chmod").filter(|chmod| !chmod.is_empty());
    let excludes = flags.strings("exclude");
    check_copy_values(request, &chmod, &excludes)?;
    Ok(AddInstruction {
        span: request.span(),
        files,
        chown: flags.string("chown").filter(|chown| !chown.is_empty()),
        chmod,
        link: flags.bool("link").unwrap_or(false),
        keep_git_dir: flags.bool("keep-git-dir"),
        checksum: flags
            .string("checksum")
            .filter(|checksum| !checksum.is_empty()),
        unpack: flags.bool("unpack"),
        excludes,
    })
}

fn parse_arg(request: &Request) -> Result<ArgInstruction, Error> {
    let words = request.words();
    if words.is_empty() {
        return Err(request.error("ARG requires at least one argument"));
    }
    request.flags(&[])?;
    let mut args = Vec::with_capacity(words.len());
    for word in words {
        let definition = match word.split_once('=') {
            Some((name, default)) => ArgDefinition {
                name: name.to_string(),
                default: Some(default.to_string()),
            },
            None => ArgDefinition {
                name: word.clone(),
                default: None,
            },
        };
        if definition.name.is_empty() {
            return Err(request.error("ARG names can not be blank"));
        }
        args.push(definition);
    }
    Ok(ArgInstruction {
        span: request.span(),
        args,
    })
}

fn parse_onbuild(request: &Request) -> Result<OnbuildInstruction, Error> {
    request.flags(&[])?;
    let nested = match &request.node.args {
        Args::Nested(nested) => nested,
        _ => return Err(request.error("ONBUILD requires at least one argument")),
    };
    let trigger_name = nested.keyword.trim().to_ascii_uppercase();
    match trigger_name.as_str() {
        "" => return Err(request.error("ONBUILD requires at least one argument")),
        "ONBUILD" => {
            return Err(request.error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"))
        }
        "MAINTAINER" | "FROM" => {
            return Err(request.error(format!(
                "{trigger_name} isn't allowed as an ONBUILD trigger"
            )))
        }
        _ => {}
    }
    // The parser leaves the nested node without lines or heredocs: they are the outer node's.
    let mut nested = (**nested).clone();
    nested.start_line = request.node.start_line;
    nested.end_line = request.node.end_line;
    if nested.heredocs.is_empty() {
        nested.heredocs = request.node.heredocs.clone();
    }
    let trigger = parse_instruction(request.source, &nested)?;
    let original = request.node.original.trim_start();
    let mut expression = match original.get(..7) {
        Some(keyword) if keyword.eq_ignore_ascii_case("onbuild") => {
            original[7..].trim_start().to_string()
        }
        _ => original.to_string(),
    };
    for heredoc in &request.node.heredocs {
        expression.push('\n');
        expression.push_str(&heredoc.content);
        expression.push_str(&heredoc.name);
    }
    Ok(OnbuildInstruction {
        span: request.span(),
        expression,
        trigger: Box::new(trigger),
    })
}

fn parse_healthcheck(request: &Request) -> Result<HealthcheckInstruction, Error> {
    let mut words = request.words();
    // The check type is the first word; a parser may hand the shell form over as one string.
    if words.len() == 1 && !request.node.json_form {
        if let Some((kind, rest)) = words[0].trim().split_once(char::is_whitespace) {
            words = vec![kind.to_string(), rest.trim().to_string()];
        }
    }
    let Some(kind) = words.first().map(|word| word.trim().to_ascii_uppercase()) else {
        return Err(request.error("HEALTHCHECK requires at least one argument"));
    };
    let accepted = [
        ("interval", FlagKind::String),
        ("timeout", FlagKind::String),
        ("start-period", FlagKind::String),
        ("start-interval", FlagKind::String),
        ("retries", FlagKind::String),
    ];
    let flags = request.flags(&accepted)?;
    let rest = &words[1..];
    if kind == "NONE" {
        if !rest.is_empty() {
            return Err(request.error("HEALTHCHECK NONE takes no arguments"));
        }
        let health = HealthConfig {
            test: Some(vec!["NONE".to_string()]),
            ..HealthConfig::default()
        };
        return Ok(HealthcheckInstruction {
            span: request.span(),
            health,
        });
    }
    if kind != "CMD" {
        return Err(request.error(format!(
            "unknown type {:?} in HEALTHCHECK (try CMD)",
            words[0]
        )));
    }
    let command: Vec<String> = if request.node.json_form || rest.is_empty() {
        rest.to_vec()
    } else {
        vec![rest.join(" ")]
    };
    if command.is_empty() || command.iter().all(|word| word.is_empty()) && !request.node.json_form {
        return Err(request.error("missing command after HEALTHCHECK CMD"));
    }
    let test_kind = if request.node.json_form {
        "CMD"
    } else {
        "CMD-SHELL"
    };
    let mut test = vec![test_kind.to_string()];
    test.extend(command);
    let interval = |name: &str| -> Result<Option<i64>, Error> {
        let Some(text) = flags.string(name).filter(|text| !text.is_empty()) else {
            return Ok(None);
        };
        let nanoseconds = parse_go_duration(&text)
            .map_err(|message| request.error_near(&format!("--{name}"), message))?;
        if nanoseconds == 0 {
            return Ok(None);
        }
        if nanoseconds < 1_000_000 {
            return Err(request.error_near(
                &format!("--{name}"),
                format!("interval {name:?} cannot be less than 1ms"),
            ));
        }
        Ok(Some(nanoseconds))
    };
    let retries = match flags.string("retries").filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => {
            let retries: i32 = text.parse().map_err(|_| {
                request.error_near(
                    "--retries",
                    format!("invalid value for --retries: {text:?}"),
                )
            })?;
            if retries < 0 {
                return Err(request.error_near(
                    "--retries",
                    format!("--retries cannot be negative ({retries})"),
                ));
            }
            Some(i64::from(retries)).filter(|retries| *retries != 0)
        }
    };
    let health = HealthConfig {
        test: Some(test),
        interval: interval("interval")?,
        timeout: interval("timeout")?,
        start_period: interval("start-period")?,
        start_interval: interval("start-interval")?,
        retries,
    };
    Ok(HealthcheckInstruction {
        span: request.span(),
        health,
    })
}
