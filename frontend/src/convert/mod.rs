//! Dockerfile -> DAG conversion, like BuildKit's `dockerfile2llb`: stages, ARG scoping,
//! variable expansion per instruction, one op per filesystem change, and each stage's image
//! config with BuildKit-style history.

mod dispatch;
mod reference;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use kiln_types::{ImageSpec, Platform, RootFs};

use crate::dag::{self, Definition, DefinitionBuilder, Input, OpMetadata, PrintFormat};
use crate::error::{closest, Error};
use crate::instructions::{self, ArgInstruction, Instruction, SourceFile, Span, Stage};
use crate::resolver::ImageResolver;
use crate::shell::{Env, Lexer};

pub use reference::{normalize_reference, ReferenceError};

/// The proxy build args that reach RUN without being declared (and without changing digests).
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The `PATH` an image without one gets.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the conversion needs besides the Dockerfile.
pub struct ConvertOptions<'a> {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target`; `None` builds the last stage.
    pub target: Option<String>,
    /// The platform to build for; `None` means the build platform.
    pub target_platform: Option<Platform>,
    /// The platform the build runs on; `None` means this machine's.
    pub build_platform: Option<Platform>,
    /// `.dockerignore` patterns, excluded from every context source.
    pub dockerignore: Vec<String>,
    /// Base image configs.
    pub resolver: &'a dyn ImageResolver,
    /// The context's client-side name (`context`).
    pub context_name: String,
    /// A hostname for RUN, if set.
    pub hostname: Option<String>,
    /// `--no-cache-filter`: stages (by name, case-insensitive, or by index) whose ops must not
    /// use cached results; their ops get [`OpMetadata::ignore_cache`].
    pub no_cache_filter: Vec<String>,
    /// `SOURCE_DATE_EPOCH` (Unix seconds) from the environment; a `--build-arg
    /// SOURCE_DATE_EPOCH=N` takes precedence, a global `ARG SOURCE_DATE_EPOCH=N` comes last.
    /// It becomes the `created` time of the history entries and the time of the directories
    /// and inline files the build creates (WORKDIR, heredocs). Copied files keep their times,
    /// as in BuildKit: the exporter clamps layer times to the epoch.
    pub source_date_epoch: Option<i64>,
}

impl<'a> ConvertOptions<'a> {
    pub fn new(resolver: &'a dyn ImageResolver) -> Self {
        ConvertOptions {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: None,
            build_platform: None,
            dockerignore: Vec::new(),
            resolver,
            context_name: "context".to_string(),
            hostname: None,
            no_cache_filter: Vec::new(),
            source_date_epoch: None,
        }
    }
}

/// Where a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageBase {
    Scratch,
    /// A registry image: the reference after expansion, and fully qualified.
    Image {
        written: String,
        reference: String,
    },
    /// An earlier stage, by index.
    Stage(usize),
}

/// One converted stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageResult {
    /// Position in the Dockerfile (0-based).
    pub index: usize,
    /// The `AS` name (lower case), if any.
    pub name: Option<String>,
    pub base: StageBase,
    pub platform: Platform,
    /// The stage's image config with history (no rootfs diff ids: the exporter fills them).
    pub image: ImageSpec,
    /// The stage's final filesystem.
    pub output: Input,
}

/// The conversion's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertResult {
    /// Every op the target needs, in topological order.
    pub definition: Definition,
    /// The target stage's filesystem.
    pub target: Input,
    /// The target's index in `stages`.
    pub target_stage: usize,
    /// The converted stages (those the target needs), in Dockerfile order.
    pub stages: Vec<StageResult>,
    /// The `SOURCE_DATE_EPOCH` in force (from the options, a build arg or a global ARG), for
    /// the exporter.
    pub source_date_epoch: Option<i64>,
}

impl ConvertResult {
    /// The target stage.
    pub fn target_stage(&self) -> &StageResult {
        &self.stages[self.target_stage]
    }
}

/// Prints a result in a `--print-dag` format. Text adds the stages' configs after the ops.
pub fn render_result(result: &ConvertResult, format: PrintFormat) -> String {
    match format {
        PrintFormat::Text => {
            let mut out = dag::print_text(&result.definition);
            let position = result
                .definition
                .position(&result.target.digest)
                .map_or_else(String::new, |p| format!("#{p}"));
            let target = result.target_stage();
            let _ = writeln!(out, "target: {position} stage {}", stage_label(target));
            for stage in &result.stages {
                out.push('\n');
                render_stage(&mut out, &result.definition, stage);
            }
            out
        }
        PrintFormat::Dot => dag::print_dot(&result.definition),
        PrintFormat::Json => {
            let stages: Vec<serde_json::Value> = result
                .stages
                .iter()
                .map(|stage| {
                    serde_json::json!({
                        "index": stage.index,
                        "name": stage.name,
                        "platform": stage.platform.to_string(),
                        "output": stage.output,
                        "image": stage.image,
                    })
                })
                .collect();
            let document = serde_json::json!({
                "ops": result.definition.vertices(),
                "target": result.target,
                "stages": stages,
            });
            let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
            text.push('\n');
            text
        }
    }
}

fn stage_label(stage: &StageResult) -> String {
    match &stage.name {
        Some(name) => format!("{} ({name})", stage.index),
        None => stage.index.to_string(),
    }
}

fn render_stage(out: &mut String, definition: &Definition, stage: &StageResult) {
    let base = match &stage.base {
        StageBase::Scratch => "scratch".to_string(),
        StageBase::Image { reference, .. } => reference.clone(),
        StageBase::Stage(index) => format!("stage {index}"),
    };
    let position = definition
        .position(&stage.output.digest)
        .map_or_else(String::new, |p| format!("#{p}"));
    let _ = writeln!(
        out,
        "stage {} from {base} platform={} output={position}",
        stage_label(stage),
        stage.platform
    );
    let mut image = stage.image.clone();
    let history = std::mem::take(&mut image.history);
    let config = serde_json::to_string(&image.config).unwrap_or_default();
    let _ = writeln!(out, "  config: {config}");
    if let Some(author) = &image.author {
        let _ = writeln!(out, "  author: {author}");
    }
    for entry in history {
        let _ = writeln!(
            out,
            "  history: {}{}{}",
            entry.created_by.unwrap_or_default(),
            if entry.empty_layer { " (empty)" } else { "" },
            entry
                .created
                .map(|created| format!(" created={created}"))
                .unwrap_or_default()
        );
    }
}

/// Converts a Dockerfile to its DAG and the target's image config.
pub fn convert(
    text: &str,
    file_name: &str,
    options: &ConvertOptions<'_>,
) -> Result<ConvertResult, Error> {
    if text.trim().is_empty() {
        return Err(Error::general(file_name, "the Dockerfile cannot be empty"));
    }
    let dockerfile = crate::parser::parse(file_name, text)?;
    let source = SourceFile::new(file_name, text);
    let (meta_args, stages) = instructions::parse_stages(&source, &dockerfile)?;
    let converter = Converter::new(source, options, Lexer::new(dockerfile.escape));
    converter.run(&meta_args, stages)
}

/// An instruction of a stage as the converter runs it.
#[derive(Debug, Clone)]
struct StageCommand {
    instruction: Instruction,
    /// It came from an ONBUILD trigger (its span is then the stage's FROM line).
    from_onbuild: bool,
}

impl StageCommand {
    fn span(&self) -> &Span {
        self.instruction.span()
    }
}

/// The state of one stage (or of an image named by `COPY --from` / `--mount from=`).
#[derive(Debug, Clone)]
struct StageState {
    index: usize,
    name: Option<String>,
    /// `stage-N` or the name, for progress names.
    display_name: String,
    /// The base name after expansion.
    base_name: String,
    platform: Option<Platform>,
    commands: Vec<StageCommand>,
    start_line: usize,
    base_stage: Option<usize>,
    /// Stages read by COPY --from / RUN --mount from=.
    dependencies: Vec<usize>,
    /// An image only named by `--from`, not a stage of the file.
    unregistered: bool,
    /// Named by `--no-cache-filter`: its ops do not use the cache.
    ignore_cache: bool,
    resolved: bool,
    dispatched: bool,
    onbuild_initialized: bool,
    base: StageBase,
    /// The current filesystem.
    filesystem: Option<Input>,
    env: Vec<(String, String)>,
    cwd: String,
    user: String,
    image: ImageSpec,
    build_args: Vec<(String, Option<String>)>,
    cmd_set: bool,
    command_total: usize,
    command_index: usize,
}

struct Converter<'a> {
    source: SourceFile,
    options: &'a ConvertOptions<'a>,
    lexer: Lexer,
    target_platform: Platform,
    build_platform: Platform,
    global_args: Vec<(String, String)>,
    states: Vec<StageState>,
    builder: DefinitionBuilder,
    /// Proxy values from build args, for RUN (not digested).
    proxy_env: Vec<String>,
    /// `SOURCE_DATE_EPOCH`, once the global ARGs are known.
    epoch: Option<i64>,
    /// The epoch as history's `created` time.
    epoch_created: Option<String>,
}

/// An ordered environment where setting a key moves it to the end (BuildKit's `EnvList`).
pub(crate) fn env_set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(existing, _)| existing != key);
    env.push((key.to_string(), value.to_string()));
}

pub(crate) fn env_get<'e>(env: &'e [(String, String)], key: &str) -> Option<&'e str> {
    env.iter()
        .rev()
        .find(|(existing, _)| existing == key)
        .map(|(_, value)| value.as_str())
}

/// Whether the lexer gives `word` back unchanged: nothing to expand, unquote or unescape.
pub(crate) fn is_plain_word(word: &str, escape: char) -> bool {
    !word.contains(['$', '<', '\'', '"', escape])
}

/// `Env` over a slice of pairs.
pub(crate) struct PairsEnv<'e>(pub &'e [(String, String)]);

impl Env for PairsEnv<'_> {
    fn lookup(&self, name: &str) -> Option<String> {
        env_get(self.0, name).map(str::to_string)
    }
}

impl<'a> Converter<'a> {
    fn new(source: SourceFile, options: &'a ConvertOptions<'a>, lexer: Lexer) -> Self {
        let build_platform = options
            .build_platform
            .clone()
            .unwrap_or_else(Platform::host);
        let target_platform = options
            .target_platform
            .clone()
            .unwrap_or_else(|| build_platform.clone());
        let proxy_env = options
            .build_args
            .iter()
            .filter(|(key, _)| PROXY_ARGS.contains(&key.as_str()))
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        Converter {
            source,
            options,
            lexer,
            target_platform,
            build_platform,
            global_args: Vec::new(),
            states: Vec::new(),
            builder: DefinitionBuilder::new(),
            proxy_env,
            epoch: None,
            epoch_created: None,
        }
    }

    /// An error at a line of the Dockerfile, quoting it.
    fn error_at(&self, line: usize, message: impl Into<String>) -> Error {
        if line == 0 {
            return Error::general(self.source.name(), message);
        }
        let span = Span {
            start_line: line,
            end_line: line,
            original: String::new(),
        };
        self.source.error_at(&span, message)
    }

    fn run(
        mut self,
        meta_args: &[ArgInstruction],
        stages: Vec<Stage>,
    ) -> Result<ConvertResult, Error> {
        let target_name = match &self.options.target {
            Some(target) => target.clone(),
            None => stages
                .last()
                .and_then(|stage| stage.name.clone())
                .unwrap_or_default(),
        };
        self.global_args = default_args(
            &self.build_platform,
            &self.target_platform,
            &self.options.build_args,
            &target_name,
        );
        for arg in meta_args {
            let line = arg.span.start_line;
            for definition in &arg.args {
                let (key, default) = (&definition.name, &definition.default);
                let value = match self.options.build_args.get(key) {
                    Some(value) => Some(value.clone()),
                    None => match default {
                        Some(default) => Some(
                            self.lexer
                                .process_word(default, &PairsEnv(&self.global_args))
                                .map_err(|error| self.error_at(line, error.to_string()))?
                                .result,
                        ),
                        None => None,
                    },
                };
                if let Some(value) = value {
                    env_set(&mut self.global_args, key, &value);
                }
            }
        }
        self.epoch = self.source_date_epoch()?;
        self.epoch_created = self.epoch.map(rfc3339);
        for (index, stage) in stages.into_iter().enumerate() {
            self.add_stage(index, stage)?;
        }
        let target = self.resolve_target()?;
        self.build_dependencies()?;
        self.check_cycles()?;
        let reachable = self.resolve_stages(target)?;
        for index in 0..self.states.len() {
            if reachable.contains(&index) && !self.states[index].dispatched {
                self.dispatch_stage(index)?;
            }
        }
        self.finish(target, &reachable)
    }

    /// `SOURCE_DATE_EPOCH`: a build arg, else the option, else a global ARG's value.
    fn source_date_epoch(&self) -> Result<Option<i64>, Error> {
        const KEY: &str = "SOURCE_DATE_EPOCH";
        let text = match (
            self.options.build_args.get(KEY),
            self.options.source_date_epoch,
        ) {
            (Some(text), _) => text.as_str(),
            (None, Some(epoch)) => return Ok(Some(epoch)),
            (None, None) => env_get(&self.global_args, KEY).unwrap_or_default(),
        };
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<i64>().map(Some).map_err(|_| {
            Error::general(
                self.source.name(),
                format!("invalid SOURCE_DATE_EPOCH: {text} (it must be a whole number of seconds since 1970)"),
            )
        })
    }

    fn add_stage(&mut self, index: usize, stage: Stage) -> Result<(), Error> {
        let global = PairsEnv(&self.global_args);
        let start_line = stage.location.start_line;
        let base = self
            .lexer
            .process_word(&stage.base_name, &global)
            .map_err(|error| self.error_at(start_line, error.to_string()))?;
        if base.result.is_empty() {
            return Err(self.error_at(
                start_line,
                format!("base name ({}) should not be blank", stage.base_name),
            ));
        }
        let platform = match stage.platform.as_deref().filter(|text| !text.is_empty()) {
            None => None,
            Some(text) => {
                let expanded = self.lexer.process_word(text, &global).map_err(|error| {
                    self.error_at(
                        start_line,
                        format!("failed to process arguments for platform {text}: {error}"),
                    )
                })?;
                if expanded.result.is_empty() {
                    return Err(self.error_at(
                        start_line,
                        format!("empty platform value from expression {text}"),
                    ));
                }
                Some(Platform::parse(&expanded.result).map_err(|error| {
                    self.error_at(
                        start_line,
                        format!("failed to parse platform {text}: {error}"),
                    )
                })?)
            }
        };
        let display_name = stage
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"));
        let base_stage = self.find_stage(&base.result);
        let ignore_cache = self.options.no_cache_filter.iter().any(|wanted| {
            let by_name = stage
                .name
                .as_deref()
                .is_some_and(|name| name.eq_ignore_ascii_case(wanted));
            let by_index = !wanted.is_empty()
                && wanted.bytes().all(|byte| byte.is_ascii_digit())
                && wanted.parse::<usize>() == Ok(index);
            by_name || by_index
        });
        let state = StageState {
            index,
            name: stage.name,
            display_name,
            base_name: base.result,
            platform,
            commands: stage
                .commands
                .into_iter()
                .map(|instruction| StageCommand {
                    instruction,
                    from_onbuild: false,
                })
                .collect(),
            start_line,
            base_stage,
            dependencies: Vec::new(),
            unregistered: false,
            ignore_cache,
            resolved: false,
            dispatched: false,
            onbuild_initialized: false,
            base: StageBase::Scratch,
            filesystem: None,
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            image: ImageSpec::default(),
            build_args: Vec::new(),
            cmd_set: false,
            command_total: 0,
            command_index: 0,
        };
        self.states.push(state);
        Ok(())
    }

    /// A stage by name (case-insensitive), among the registered stages so far.
    fn find_stage(&self, name: &str) -> Option<usize> {
        let lower = name.to_lowercase();
        self.states
            .iter()
            .rposition(|state| !state.unregistered && state.name.as_deref() == Some(lower.as_str()))
    }

    fn resolve_target(&self) -> Result<usize, Error> {
        let Some(target) = &self.options.target else {
            return Ok(self.states.len() - 1);
        };
        self.find_stage(target).ok_or_else(|| {
            let names: Vec<&str> = self
                .states
                .iter()
                .filter_map(|state| state.name.as_deref())
                .collect();
            Error::general(
                self.source.name(),
                format!("target stage {target:?} could not be found"),
            )
            .with_suggestion(closest(target, names.iter().copied()))
        })
    }

    /// The stages a command reads (COPY --from, RUN --mount from=), registering images.
    fn command_sources(&mut self, command: &StageCommand) -> Result<Vec<usize>, Error> {
        let mut names = Vec::new();
        let start_line = command.span().start_line;
        match &command.instruction {
            Instruction::Copy(copy) => {
                if let Some(from) = &copy.from {
                    let expanded = self
                        .lexer
                        .process_word(from, &crate::shell::NoEnv)
                        .map_err(|error| self.error_at(start_line, error.to_string()))?;
                    if expanded.result != *from {
                        return Err(self.error_at(start_line, "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"));
                    }
                    if let Ok(index) = from.parse::<i64>() {
                        let registered = self
                            .states
                            .iter()
                            .filter(|state| !state.unregistered)
                            .count();
                        if index < 0 || index as usize >= registered {
                            return Err(
                                self.error_at(start_line, format!("invalid stage index {index}"))
                            );
                        }
                        return Ok(vec![index as usize]);
                    }
                    names.push(from.clone());
                }
            }
            Instruction::Run(run) => {
                for mount in &run.mounts {
                    if let Some(from) = mount_from(mount) {
                        names.push(from);
                    }
                }
            }
            _ => {}
        }
        let mut sources = Vec::new();
        for name in names {
            let index = match self.find_stage(&name) {
                Some(index) => index,
                None => self.register_image(&name, start_line),
            };
            sources.push(index);
        }
        Ok(sources)
    }

    /// A pseudo-stage for an image used only by `--from`.
    fn register_image(&mut self, name: &str, line: usize) -> usize {
        if let Some(index) = self
            .states
            .iter()
            .position(|state| state.unregistered && state.base_name == name)
        {
            return index;
        }
        let index = self.states.len();
        self.states.push(StageState {
            index,
            name: None,
            display_name: name.to_string(),
            base_name: name.to_string(),
            platform: None,
            commands: Vec::new(),
            start_line: line,
            base_stage: None,
            dependencies: Vec::new(),
            unregistered: true,
            ignore_cache: false,
            resolved: false,
            dispatched: false,
            onbuild_initialized: true,
            base: StageBase::Scratch,
            filesystem: None,
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            image: ImageSpec::default(),
            build_args: Vec::new(),
            cmd_set: false,
            command_total: 0,
            command_index: 0,
        });
        index
    }

    fn build_dependencies(&mut self) -> Result<(), Error> {
        for index in 0..self.states.len() {
            let commands = std::mem::take(&mut self.states[index].commands);
            let mut sources = Vec::new();
            for command in &commands {
                match self.command_sources(command) {
                    Ok(found) => sources.extend(found),
                    Err(error) => {
                        self.states[index].commands = commands;
                        return Err(error);
                    }
                }
            }
            let state = &mut self.states[index];
            state.commands = commands;
            for source in sources {
                if !state.dependencies.contains(&source) {
                    state.dependencies.push(source);
                }
            }
        }
        Ok(())
    }

    fn check_cycles(&self) -> Result<(), Error> {
        // 0 = unvisited, 1 = on the stack, 2 = done.
        fn visit(
            converter: &Converter<'_>,
            index: usize,
            marks: &mut [u8],
            path: &mut Vec<usize>,
        ) -> Result<(), Error> {
            match marks[index] {
                2 => return Ok(()),
                1 => {
                    let start = path.iter().position(|&p| p == index).unwrap_or(0);
                    let names: Vec<String> = path[start..]
                        .iter()
                        .chain(std::iter::once(&index))
                        .map(|&p| converter.states[p].display_name.clone())
                        .collect();
                    let state = &converter.states[path[start]];
                    return Err(converter.error_at(
                        state.start_line,
                        format!(
                            "circular dependency detected on stage: {}",
                            names.join(" -> ")
                        ),
                    ));
                }
                _ => {}
            }
            marks[index] = 1;
            path.push(index);
            let state = &converter.states[index];
            for &next in state.base_stage.iter().chain(state.dependencies.iter()) {
                visit(converter, next, marks, path)?;
            }
            path.pop();
            marks[index] = 2;
            Ok(())
        }
        let mut marks = vec![0u8; self.states.len()];
        for index in 0..self.states.len() {
            visit(self, index, &mut marks, &mut Vec::new())?;
        }
        Ok(())
    }

    fn reachable(&self, target: usize) -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut stack = vec![target];
        while let Some(index) = stack.pop() {
            if !seen.insert(index) {
                continue;
            }
            let state = &self.states[index];
            stack.extend(state.base_stage.iter().copied());
            stack.extend(state.dependencies.iter().copied());
        }
        seen
    }

    /// Resolves base images of the reachable stages and expands ONBUILD triggers, until no
    /// trigger adds a dependency.
    fn resolve_stages(&mut self, target: usize) -> Result<HashSet<usize>, Error> {
        loop {
            let reachable = self.reachable(target);
            let mut order: Vec<usize> = reachable.iter().copied().collect();
            order.sort_unstable();
            for &index in &order {
                if self.states[index].base_stage.is_none() && !self.states[index].resolved {
                    self.resolve_base(index)?;
                }
            }
            let mut new_dependencies = false;
            for &index in &order {
                if self.states[index].onbuild_initialized {
                    continue;
                }
                let triggers = self.onbuild_triggers(index, &mut HashSet::new());
                let state = &mut self.states[index];
                state.onbuild_initialized = true;
                // The stage consumes its base image's triggers: they are not inherited by its
                // image, which records only the stage's own ONBUILD instructions (a stage
                // based on a stage drops its base's OnBuild when it is dispatched).
                if state.base_stage.is_none() {
                    state.image.config.on_build = None;
                }
                if triggers.is_empty() {
                    continue;
                }
                let line = self.states[index].start_line;
                let mut commands = Vec::new();
                for trigger in &triggers {
                    let command = self.parse_trigger(trigger, line)?;
                    let sources = self.command_sources(&command)?;
                    for source in sources {
                        if !self.states[index].dependencies.contains(&source) {
                            self.states[index].dependencies.push(source);
                            new_dependencies = true;
                        }
                    }
                    commands.push(command);
                }
                let state = &mut self.states[index];
                commands.append(&mut state.commands);
                state.commands = commands;
            }
            if new_dependencies {
                self.check_cycles()?;
                continue;
            }
            return Ok(reachable);
        }
    }

    /// An ONBUILD trigger parsed as an instruction of the stage whose FROM is at `line`.
    fn parse_trigger(&self, trigger: &str, line: usize) -> Result<StageCommand, Error> {
        let parsed = crate::parser::parse(self.source.name(), trigger)
            .map_err(|error| self.error_at(line, error.message))?;
        let [node] = parsed.nodes.as_slice() else {
            return Err(self.error_at(line, "onbuild trigger should be a single expression"));
        };
        let mut node = node.clone();
        node.start_line = line;
        node.end_line = line;
        let trigger_source = SourceFile::new(self.source.name(), trigger);
        let instruction =
            instructions::parse_instruction(&trigger_source, &node).map_err(|error| {
                self.error_at(line, error.message)
                    .with_suggestion(error.did_you_mean)
            })?;
        if matches!(instruction, Instruction::From(_)) {
            return Err(self.error_at(line, "FROM isn't allowed as an ONBUILD trigger"));
        }
        Ok(StageCommand {
            instruction,
            from_onbuild: true,
        })
    }

    /// The ONBUILD triggers a stage runs first: the base image's (from its config) or the base
    /// stage's ONBUILD instructions.
    fn onbuild_triggers(&self, index: usize, seen: &mut HashSet<usize>) -> Vec<String> {
        let state = &self.states[index];
        if !seen.insert(index) {
            return Vec::new();
        }
        match state.base_stage {
            Some(base) => self.states[base]
                .commands
                .iter()
                .filter_map(|command| match &command.instruction {
                    Instruction::Onbuild(onbuild) if !command.from_onbuild => {
                        Some(onbuild.expression.clone())
                    }
                    _ => None,
                })
                .collect(),
            None => state.image.config.on_build.clone().unwrap_or_default(),
        }
    }

    fn resolve_base(&mut self, index: usize) -> Result<(), Error> {
        let line = self.states[index].start_line;
        let platform = self.states[index]
            .platform
            .clone()
            .unwrap_or_else(|| self.target_platform.clone());
        let base_name = self.states[index].base_name.clone();
        self.states[index].resolved = true;
        if base_name.eq_ignore_ascii_case("scratch") && !base_name.contains('/') {
            let state = &mut self.states[index];
            state.base = StageBase::Scratch;
            state.image = empty_image(&platform);
            state.platform = Some(platform);
            return Ok(());
        }
        let reference = normalize_reference(&base_name).map_err(|error| {
            let names: Vec<&str> = self
                .states
                .iter()
                .filter_map(|state| state.name.as_deref())
                .collect();
            self.error_at(
                line,
                format!("failed to parse stage name {base_name:?}: {error}"),
            )
            .with_suggestion(closest(&base_name, names.iter().copied()))
        })?;
        let config = self
            .options
            .resolver
            .resolve_config(&reference, &platform)
            .map_err(|error| self.error_at(line, format!("{base_name}: {error}")))?;
        // An image without layers is the empty filesystem with a config: BuildKit builds on
        // scratch then (a schema 1 image lists no diff ids, but non-empty history entries).
        let layerless = config.as_ref().is_some_and(|image| {
            image.rootfs.diff_ids.is_empty() && image.history.iter().all(|entry| entry.empty_layer)
        });
        let mut image = match config {
            Some(mut image) => {
                image.created = None;
                image.history.clear();
                image.rootfs = RootFs::layers(Vec::new());
                if image.config.env.is_none() && platform.os != "windows" {
                    image.config.env = Some(vec![format!("PATH={DEFAULT_PATH}")]);
                }
                image
            }
            None => {
                let mut image = empty_image(&platform);
                image.config.working_dir = None;
                image
            }
        };
        if image.os.is_empty() {
            image.os = platform.os.clone();
            image.architecture = platform.architecture.clone();
            image.variant = platform.variant.clone();
        }
        let state = &mut self.states[index];
        state.base = if layerless {
            StageBase::Scratch
        } else {
            StageBase::Image {
                written: base_name,
                reference,
            }
        };
        state.image = image;
        state.platform = Some(platform);
        Ok(())
    }

    /// Adds an op, mapping a DAG error to a Dockerfile error at `line`.
    fn add_op(&mut self, op: dag::Op, metadata: OpMetadata, line: usize) -> Result<Input, Error> {
        self.builder
            .add(op, metadata)
            .map_err(|error| self.error_at(line, error.to_string()))
    }

    fn finish(self, target: usize, reachable: &HashSet<usize>) -> Result<ConvertResult, Error> {
        let target_output = self.states[target].filesystem.clone().ok_or_else(|| {
            Error::general(
                self.source.name(),
                "the target stage produced no filesystem",
            )
        })?;
        let mut stages = Vec::new();
        let mut target_stage = 0;
        for state in self.states {
            if state.unregistered || !reachable.contains(&state.index) {
                continue;
            }
            let Some(output) = state.filesystem else {
                continue;
            };
            if state.index == target {
                target_stage = stages.len();
            }
            let mut image = state.image;
            image.config.on_build = image
                .config
                .on_build
                .filter(|triggers| !triggers.is_empty());
            stages.push(StageResult {
                index: state.index,
                name: state.name,
                base: match state.base_stage {
                    Some(base) => StageBase::Stage(base),
                    None => state.base,
                },
                platform: state
                    .platform
                    .unwrap_or_else(|| self.target_platform.clone()),
                image,
                output,
            });
        }
        let definition = self.builder.finish(std::slice::from_ref(&target_output));
        Ok(ConvertResult {
            definition,
            target: target_output,
            target_stage,
            stages,
            source_date_epoch: self.epoch,
        })
    }
}

/// The value of `from=` in a raw `--mount` flag, if any.
fn mount_from(raw: &str) -> Option<String> {
    let fields = instructions::values::split_csv(raw).ok()?;
    fields.into_iter().find_map(|field| {
        let (key, value) = field.split_once('=')?;
        (key.trim().eq_ignore_ascii_case("from") && !value.is_empty()).then(|| value.to_string())
    })
}

/// BuildKit's predefined platform args plus `TARGETSTAGE`.
fn default_args(
    build: &Platform,
    target: &Platform,
    overrides: &BTreeMap<String, String>,
    target_stage: &str,
) -> Vec<(String, String)> {
    let target_stage = if target_stage.is_empty() {
        "default"
    } else {
        target_stage
    };
    let entries = [
        ("BUILDPLATFORM", build.to_string()),
        ("BUILDOS", build.os.clone()),
        (
            "BUILDOSVERSION",
            build.os_version.clone().unwrap_or_default(),
        ),
        ("BUILDARCH", build.architecture.clone()),
        ("BUILDVARIANT", build.variant.clone().unwrap_or_default()),
        ("TARGETPLATFORM", target.to_string()),
        ("TARGETOS", target.os.clone()),
        (
            "TARGETOSVERSION",
            target.os_version.clone().unwrap_or_default(),
        ),
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
        ("TARGETSTAGE", target_stage.to_string()),
    ];
    entries
        .into_iter()
        .map(|(key, value)| {
            (
                key.to_string(),
                overrides.get(key).cloned().unwrap_or(value),
            )
        })
        .collect()
}

/// The config of a stage with no image (scratch, or an image the resolver does not know).
fn empty_image(platform: &Platform) -> ImageSpec {
    let mut image = ImageSpec {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        rootfs: RootFs::layers(Vec::new()),
        ..ImageSpec::default()
    };
    image.config.working_dir = Some("/".into());
    if platform.os != "windows" {
        image.config.env = Some(vec![format!("PATH={DEFAULT_PATH}")]);
    }
    image
}

/// Unix seconds as RFC 3339 in UTC (`2023-11-14T22:13:20Z`), as image configs write times.
fn rfc3339(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let second_of_day = unix_seconds.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days: the proleptic Gregorian date of a day number.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
