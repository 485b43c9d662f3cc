//! Per-instruction dispatch: each instruction's effect on the stage's filesystem (new ops), its
//! run-time state (env, cwd, user) and its image config and history, as BuildKit's `dispatch*`.

use std::borrow::Cow;
use std::fmt::Write as _;

use kiln_types::{HealthConfig, History, ImageSpec};

use super::{
    env_get, env_set, is_plain_word, Converter, PairsEnv, StageBase, StageCommand, DEFAULT_PATH,
};
use crate::dag::{
    CacheMount, CacheSharing, Chmod, Chown, CopyAction, ExecOp, FileAction, FileOp, GitSource,
    HttpSource, ImageSource, Input, LocalSource, MergeOp, MkdirAction, MkfileAction, Mount,
    MountKind, NetworkMode, Op, OpKind, OpMetadata, SecretEnv, SecretMount, SecurityMode, SourceOp,
    SshMount, UserOrId,
};
use crate::dockerignore::clean_path;
use crate::error::Error;
use crate::instructions::mount::{self as run_mount, MountType};
use crate::instructions::values::{parse_chmod, parse_exposed_port, Chmod as ParsedChmod};
use crate::instructions::{
    self, AddInstruction, ArgDefinition, CommandLine, CopyInstruction, Instruction, RunInstruction,
    SourcesAndDest,
};
use crate::shell::go_unicode::{go_quote, go_quote_list};

const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

type Failure = String;

impl Converter<'_> {
    /// Sets a stage up from its base and runs its commands.
    pub(super) fn dispatch_stage(&mut self, index: usize) -> Result<(), Error> {
        let line = self.states[index].start_line;
        let single_stage = self
            .states
            .iter()
            .filter(|state| !state.unregistered)
            .count()
            == 1;
        if let Some(base) = self.states[index].base_stage {
            let base_state = &self.states[base];
            let filesystem = base_state.filesystem.clone();
            let platform = base_state.platform.clone();
            let mut image = base_state.image.clone();
            let build_args = base_state.build_args.clone();
            let env = base_state.env.clone();
            let cwd = base_state.cwd.clone();
            let user = base_state.user.clone();
            image.config.on_build = None;
            let state = &mut self.states[index];
            state.filesystem = filesystem;
            state.platform = platform;
            state.image = image;
            state.build_args.extend(build_args);
            state.env = env;
            state.cwd = cwd;
            state.user = user;
        } else {
            let platform = self.states[index]
                .platform
                .clone()
                .unwrap_or_else(|| self.target_platform.clone());
            let state = &mut self.states[index];
            state.platform = Some(platform.clone());
            let mut env = Vec::new();
            if !state.image.config.env.as_ref().is_some_and(|env| {
                env.iter()
                    .any(|entry| entry.split('=').next() == Some("PATH"))
            }) && platform.os != "windows"
            {
                state
                    .image
                    .config
                    .env
                    .get_or_insert_with(Vec::new)
                    .push(format!("PATH={DEFAULT_PATH}"));
            }
            for entry in state.image.config.env.iter().flatten() {
                let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
                env_set(&mut env, key, value);
            }
            state.env = env;
            if let Some(workdir) = state
                .image
                .config
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
            {
                state.cwd = normalize_workdir("/", &workdir);
                state.image.config.working_dir = Some(state.cwd.clone());
            }
            state.user = state.image.config.user.clone().unwrap_or_default();
            let total = 1 + count_layer_commands(&state.commands);
            state.command_total = total;
            let source = match &state.base {
                StageBase::Image { written, reference } => SourceOp::Image(ImageSource {
                    written: written.clone(),
                    reference: reference.clone(),
                    platform: platform.clone(),
                }),
                _ => SourceOp::Scratch,
            };
            let from_text = match &source {
                SourceOp::Image(image) => format!("FROM {}", image.reference),
                _ => "FROM scratch".to_string(),
            };
            let is_scratch = matches!(source, SourceOp::Scratch);
            let name = if is_scratch {
                String::new()
            } else {
                self.progress_name(index, &from_text, single_stage)
            };
            let op = Op {
                inputs: vec![],
                platform: (!is_scratch).then_some(platform),
                kind: OpKind::Source(source),
            };
            let metadata = OpMetadata {
                // The base image is not the stage's own work: `--no-cache-filter` leaves it.
                ignore_cache: false,
                ..self.metadata(index, name, line, line)
            };
            let output = self.add_op(op, metadata, line)?;
            self.states[index].filesystem = Some(output);
        }
        if self.states[index].command_total == 0 {
            self.states[index].command_total = count_layer_commands(&self.states[index].commands);
        }
        self.states[index].dispatched = true;
        let commands = std::mem::take(&mut self.states[index].commands);
        for command in &commands {
            self.dispatch_command(index, command, single_stage)?;
        }
        self.states[index].commands = commands;
        Ok(())
    }

    /// The metadata of an op of the stage: its name, the stage, the lines, `--no-cache-filter`.
    fn metadata(
        &self,
        index: usize,
        name: String,
        start_line: usize,
        end_line: usize,
    ) -> OpMetadata {
        OpMetadata {
            name,
            stage: Some(self.states[index].display_name.clone()),
            lines: Some((start_line, end_line)),
            ignore_cache: self.states[index].ignore_cache,
        }
    }

    /// `[stage 2/5] RUN ...` as BuildKit's progress names.
    fn progress_name(&mut self, index: usize, text: &str, single_stage: bool) -> String {
        let state = &mut self.states[index];
        if state.command_total == 0 {
            return text.to_string();
        }
        state.command_index += 1;
        let (position, total) = (state.command_index, state.command_total);
        let mut name = String::with_capacity(text.len() + state.display_name.len() + 16);
        name.push('[');
        if !single_stage {
            name.extend([state.display_name.as_str(), " "]);
        }
        // The position is right-aligned to the width of the total.
        let width = total.to_string().len();
        let _ = write!(name, "{position:>width$}/{total}] ");
        name.push_str(text);
        name
    }

    /// The instruction text for progress: first word upper case, variables expanded where set.
    fn display_text(&self, index: usize, original: &str, from_onbuild: bool) -> String {
        let mut lexer = self.lexer;
        lexer.raw_quotes = true;
        lexer.skip_unset_env = true;
        let expanded = if is_plain_word(original, lexer.escape) {
            Cow::Borrowed(original)
        } else {
            lexer
                .expand_word(original, &PairsEnv(&self.states[index].env))
                .map_or(Cow::Borrowed(original), Cow::Owned)
        };
        let (first, rest) = match expanded.split_once(' ') {
            Some((first, rest)) => (first, Some(rest)),
            None => (expanded.as_ref(), None),
        };
        let mut text = String::with_capacity(expanded.len() + 8);
        if from_onbuild {
            text.push_str("ONBUILD ");
        }
        if first.is_ascii() {
            text.extend(
                first
                    .chars()
                    .map(|character| character.to_ascii_uppercase()),
            );
        } else {
            text.push_str(&first.to_uppercase());
        }
        if let Some(rest) = rest {
            text.push(' ');
            text.push_str(rest);
        }
        text
    }

    fn expand(&self, index: usize, word: &str) -> Result<String, Failure> {
        self.expand_borrowed(index, word).map(Cow::into_owned)
    }

    /// [`Self::expand`] without copying a word that has nothing to expand.
    fn expand_borrowed<'w>(&self, index: usize, word: &'w str) -> Result<Cow<'w, str>, Failure> {
        if is_plain_word(word, self.lexer.escape) {
            return Ok(Cow::Borrowed(word));
        }
        self.lexer
            .expand_word(word, &PairsEnv(&self.states[index].env))
            .map(Cow::Owned)
            .map_err(|error| error.to_string())
    }

    fn commit(&mut self, index: usize, created_by: String, with_layer: bool) {
        let created = self.epoch_created.clone();
        self.states[index].image.history.push(History {
            created,
            created_by: Some(created_by),
            comment: Some(HISTORY_COMMENT.to_string()),
            empty_layer: !with_layer,
            ..History::default()
        });
    }

    fn dispatch_command(
        &mut self,
        index: usize,
        command: &StageCommand,
        single_stage: bool,
    ) -> Result<(), Error> {
        let span = command.span();
        let (start_line, end_line) = (span.start_line, span.end_line);
        let changes_filesystem = matches!(
            command.instruction,
            Instruction::Workdir(_)
                | Instruction::Run(_)
                | Instruction::Copy(_)
                | Instruction::Add(_)
        );
        let name_text = if changes_filesystem {
            self.display_text(index, &span.original, command.from_onbuild)
        } else {
            String::new()
        };
        let result = if let Some(copy) = CopyRequest::of(&command.instruction) {
            self.dispatch_copy(index, &copy, &name_text, single_stage, start_line, end_line)
        } else {
            match &command.instruction {
                Instruction::Run(run) => {
                    let mounts = self.run_mounts(index, run)?;
                    self.dispatch_run(
                        index,
                        run,
                        mounts,
                        &name_text,
                        single_stage,
                        start_line,
                        end_line,
                    )
                }
                Instruction::Workdir(workdir) => {
                    self.expand_borrowed(index, &workdir.path).and_then(|path| {
                        self.dispatch_workdir(
                            index,
                            &path,
                            &name_text,
                            single_stage,
                            start_line,
                            end_line,
                        )
                    })
                }
                other => self.dispatch_config(index, other),
            }
        };
        result.map_err(|message| self.error_at(start_line, message))
    }

    /// The instructions that only change the image config (and history).
    fn dispatch_config(&mut self, index: usize, instruction: &Instruction) -> Result<(), Failure> {
        match instruction {
            Instruction::Arg(arg) => self.dispatch_arg(index, &arg.args),
            Instruction::Env(env) => {
                let mut message = String::from("ENV");
                for pair in &env.pairs {
                    let key = self.expand(index, &pair.key)?;
                    let value = self.expand(index, &pair.value)?;
                    message.extend([" ", key.as_str(), "=", value.as_str()]);
                    let state = &mut self.states[index];
                    env_set(&mut state.env, &key, &value);
                    add_env(&mut state.image, &key, &value);
                }
                self.commit(index, message, false);
                Ok(())
            }
            Instruction::Label(label) => {
                let mut message = String::from("LABEL");
                for pair in &label.labels {
                    let key = self.expand(index, &pair.key)?;
                    let value = self.expand(index, &pair.value)?;
                    message.extend([" ", key.as_str(), "=", value.as_str()]);
                    self.states[index]
                        .image
                        .config
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert(key, value);
                }
                self.commit(index, message, false);
                Ok(())
            }
            Instruction::Maintainer(maintainer) => {
                let maintainer = &maintainer.maintainer;
                self.states[index].image.author = Some(maintainer.clone());
                self.commit(index, format!("MAINTAINER {maintainer}"), false);
                Ok(())
            }
            Instruction::User(user) => {
                let user = self.expand(index, &user.user)?;
                let state = &mut self.states[index];
                state.user = user.clone();
                state.image.config.user = Some(user.clone());
                self.commit(index, format!("USER {user}"), false);
                Ok(())
            }
            Instruction::StopSignal(signal) => {
                let signal = self.expand(index, &signal.signal)?;
                validate_signal(&signal)?;
                self.states[index].image.config.stop_signal = Some(signal.clone());
                self.commit(index, format!("STOPSIGNAL {signal}"), false);
                Ok(())
            }
            Instruction::Volume(volume) => {
                let mut expanded = Vec::new();
                for volume in &volume.volumes {
                    let volume = self.expand(index, volume)?;
                    if volume.is_empty() {
                        return Err("VOLUME specified can not be an empty string".into());
                    }
                    expanded.push(volume);
                }
                let config = &mut self.states[index].image.config;
                let map = config.volumes.get_or_insert_with(Default::default);
                for volume in &expanded {
                    map.insert(volume.clone(), Default::default());
                }
                self.commit(index, format!("VOLUME [{}]", expanded.join(" ")), false);
                Ok(())
            }
            Instruction::Expose(expose) => {
                let mut specs = Vec::new();
                for port in &expose.ports {
                    let words = self
                        .lexer
                        .process_words(port, &PairsEnv(&self.states[index].env))
                        .map_err(|error| error.to_string())?;
                    for word in words {
                        specs.extend(parse_exposed_port(&word)?);
                    }
                }
                let map = self.states[index]
                    .image
                    .config
                    .exposed_ports
                    .get_or_insert_with(Default::default);
                for spec in &specs {
                    map.insert(spec.clone(), Default::default());
                }
                self.commit(index, format!("EXPOSE [{}]", specs.join(" ")), false);
                Ok(())
            }
            Instruction::Shell(shell) => {
                let shell = &shell.shell;
                self.states[index].image.config.shell = Some(shell.clone());
                self.commit(index, format!("SHELL [{}]", shell.join(" ")), false);
                Ok(())
            }
            Instruction::Cmd(cmd) => {
                let args = self.with_shell(index, &cmd.command);
                let state = &mut self.states[index];
                state.image.config.cmd = Some(args.clone());
                state.image.config.args_escaped = Some(true);
                state.cmd_set = true;
                self.commit(index, format!("CMD {}", go_quote_list(&args)), false);
                Ok(())
            }
            Instruction::Entrypoint(entrypoint) => {
                let args = self.with_shell(index, &entrypoint.command);
                let state = &mut self.states[index];
                state.image.config.entrypoint = Some(args.clone());
                if !state.cmd_set {
                    state.image.config.cmd = None;
                }
                self.commit(index, format!("ENTRYPOINT {}", go_quote_list(&args)), false);
                Ok(())
            }
            Instruction::Healthcheck(healthcheck) => {
                let config = healthcheck.health.clone();
                let message = format!("HEALTHCHECK {}", health_text(&config));
                self.states[index].image.config.healthcheck = Some(config);
                self.commit(index, message, false);
                Ok(())
            }
            Instruction::Onbuild(onbuild) => {
                self.states[index]
                    .image
                    .config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(onbuild.expression.clone());
                Ok(())
            }
            // Stages hold no FROM, and `dispatch_command` runs the others itself.
            Instruction::From(_)
            | Instruction::Run(_)
            | Instruction::Copy(_)
            | Instruction::Add(_)
            | Instruction::Workdir(_) => Err(format!(
                "{} cannot be dispatched as a config change",
                instruction.keyword()
            )),
        }
    }

    fn dispatch_arg(&mut self, index: usize, args: &[ArgDefinition]) -> Result<(), Failure> {
        let mut parts = Vec::new();
        for ArgDefinition { name: key, default } in args {
            let has_value = self.options.build_args.contains_key(key);
            let mut value = None;
            if default.is_none() && !has_value {
                value = env_get(&self.global_args, key).map(str::to_string);
            }
            if has_value {
                value = self.options.build_args.get(key).cloned();
            } else if let Some(default) = default {
                value = Some(self.expand(index, default)?);
            }
            let state = &mut self.states[index];
            if let Some(value) = &value {
                env_set(&mut state.env, key, value);
            }
            state.build_args.push((key.clone(), value.clone()));
            parts.push(match &value {
                Some(value) => format!("{key}={value}"),
                None => key.clone(),
            });
        }
        self.commit(index, format!("ARG {}", parts.join(" ")), false);
        Ok(())
    }

    fn with_shell(&self, index: usize, line: &CommandLine) -> Vec<String> {
        if !line.prepend_shell {
            return line.args.clone();
        }
        let image = &self.states[index].image;
        let mut shell = image
            .config
            .shell
            .clone()
            .filter(|shell| !shell.is_empty())
            .unwrap_or_else(|| default_shell(&image.os));
        shell.push(line.args.join(" "));
        shell
    }

    fn dispatch_workdir(
        &mut self,
        index: usize,
        path: &str,
        name_text: &str,
        single_stage: bool,
        start_line: usize,
        end_line: usize,
    ) -> Result<(), Failure> {
        let current = self.states[index]
            .image
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let workdir = normalize_workdir(&current, path);
        let state = &mut self.states[index];
        state.image.config.working_dir = Some(workdir.clone());
        state.cwd = workdir.clone();
        let with_layer = workdir != "/";
        if with_layer {
            let owner = state
                .image
                .config
                .user
                .as_deref()
                .filter(|user| !user.is_empty())
                .map(parse_chown)
                .transpose()?;
            let platform = state.platform.clone();
            let base = state.filesystem.clone().ok_or("stage has no filesystem")?;
            let name = self.progress_name(index, name_text, single_stage);
            let op = Op {
                inputs: vec![base],
                platform,
                kind: OpKind::File(FileOp {
                    base: Some(0),
                    actions: vec![FileAction::Mkdir(MkdirAction {
                        path: workdir.clone(),
                        mode: 0o755,
                        make_parents: true,
                        owner,
                        timestamp: self.epoch,
                    })],
                }),
            };
            let output = self.add_stage_op(index, op, name, start_line, end_line)?;
            self.states[index].filesystem = Some(output);
        }
        self.commit(index, format!("WORKDIR {workdir}"), with_layer);
        Ok(())
    }

    /// Adds an op made by an instruction of the stage, with the stage's metadata.
    fn add_stage_op(
        &mut self,
        index: usize,
        op: Op,
        name: String,
        start_line: usize,
        end_line: usize,
    ) -> Result<Input, Failure> {
        let metadata = self.metadata(index, name, start_line, end_line);
        self.builder
            .add(op, metadata)
            .map_err(|error| error.to_string())
    }

    /// A context source selecting `paths` (relative to the context root).
    fn context_source<S: AsRef<str>>(&mut self, paths: &[S]) -> Result<Input, Failure> {
        let mut include: Vec<String> = paths
            .iter()
            .map(|path| context_relative(path.as_ref()))
            .collect();
        if include.iter().any(|path| path == ".") {
            include.clear();
        }
        include.sort();
        include.dedup();
        let op = Op {
            inputs: vec![],
            platform: None,
            kind: OpKind::Source(SourceOp::Local(LocalSource {
                name: self.options.context_name.clone(),
                include_patterns: include,
                exclude_patterns: self.options.dockerignore.clone(),
                shared_key: self.options.context_name.clone(),
            })),
        };
        let metadata = OpMetadata {
            name: format!("[internal] load build {}", self.options.context_name),
            ..OpMetadata::default()
        };
        self.builder
            .add(op, metadata)
            .map_err(|error| error.to_string())
    }

    fn stage_output(&self, source: usize, what: &str, current: usize) -> Result<Input, Failure> {
        let state = &self.states[source];
        if !state.dispatched {
            return Err(format!(
                "cannot {what} from stage {:?}, it needs to be defined before current stage {:?}",
                state
                    .name
                    .clone()
                    .unwrap_or_else(|| state.base_name.clone()),
                self.states[current].display_name
            ));
        }
        state
            .filesystem
            .clone()
            .ok_or_else(|| "stage has no filesystem".to_string())
    }

    /// Makes sure an image named only by `--from` has its source op.
    fn ensure_image_stage(&mut self, source: usize) -> Result<(), Failure> {
        if !self.states[source].unregistered || self.states[source].dispatched {
            return Ok(());
        }
        if !self.states[source].resolved {
            self.resolve_base(source).map_err(|error| error.message)?;
        }
        let state = &self.states[source];
        let platform = state
            .platform
            .clone()
            .unwrap_or_else(|| self.target_platform.clone());
        let (kind, name) = match &state.base {
            StageBase::Image { written, reference } => (
                SourceOp::Image(ImageSource {
                    written: written.clone(),
                    reference: reference.clone(),
                    platform: platform.clone(),
                }),
                format!("FROM {reference}"),
            ),
            _ => (SourceOp::Scratch, String::new()),
        };
        let is_scratch = matches!(kind, SourceOp::Scratch);
        let op = Op {
            inputs: vec![],
            platform: (!is_scratch).then_some(platform),
            kind: OpKind::Source(kind),
        };
        let output = self
            .builder
            .add(
                op,
                OpMetadata {
                    name,
                    ..OpMetadata::default()
                },
            )
            .map_err(|error| error.to_string())?;
        let state = &mut self.states[source];
        state.filesystem = Some(output);
        state.dispatched = true;
        Ok(())
    }

    fn find_source(&mut self, index: usize, from: &str) -> Result<usize, Failure> {
        if let Ok(position) = from.parse::<usize>() {
            return Ok(position);
        }
        let found = self.find_stage(from).or_else(|| {
            self.states
                .iter()
                .position(|state| state.unregistered && state.base_name == from)
        });
        match found {
            Some(source) => Ok(source),
            None => {
                let line = self.states[index].start_line;
                Ok(self.register_image(from, line))
            }
        }
    }

    /// The RUN's `--mount` values, expanded with the stage's environment and parsed.
    fn run_mounts(
        &self,
        index: usize,
        run: &RunInstruction,
    ) -> Result<Vec<run_mount::Mount>, Error> {
        let mut expanded = Vec::with_capacity(run.mounts.len());
        for raw in &run.mounts {
            let value = self
                .expand(index, raw)
                .map_err(|message| self.error_at(run.span.start_line, message))?;
            expanded.push(value);
        }
        run_mount::parse_mounts(&expanded).map_err(|error| {
            let written = expanded
                .iter()
                .zip(&run.mounts)
                .find(|(value, _)| run_mount::parse_mount(value).is_err())
                .map_or("--mount", |(_, raw)| raw.as_str());
            self.source.mount_error(&run.span, written, &error)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_run(
        &mut self,
        index: usize,
        run: &RunInstruction,
        parsed: Vec<run_mount::Mount>,
        name_text: &str,
        single_stage: bool,
        start_line: usize,
        end_line: usize,
    ) -> Result<(), Failure> {
        let state = &self.states[index];
        let platform = state.platform.clone();
        let base = state.filesystem.clone().ok_or("stage has no filesystem")?;
        let mut inputs = vec![base];
        let mut mounts = vec![Mount {
            input: Some(0),
            selector: "/".into(),
            dest: "/".into(),
            output: Some(0),
            readonly: false,
            kind: MountKind::Bind,
        }];
        let mut args = run.command.args.clone();
        let mut display = name_text.to_string();
        if let Some(first) = run.command.files.first() {
            if args.len() != 1 || !run.command.prepend_shell {
                return Err(format!("parsing produced an invalid run command: {args:?}"));
            }
            let simple = run.command.files.len() == 1 && is_lone_heredoc(&args[0], &first.name);
            if simple {
                let data = first.data.clone();
                if state.image.os != "windows" && data.starts_with("#!") {
                    let file_op = Op {
                        inputs: vec![],
                        platform: platform.clone(),
                        kind: OpKind::File(FileOp {
                            base: None,
                            actions: vec![FileAction::Mkfile(MkfileAction {
                                path: format!("/{}", first.name),
                                mode: 0o755,
                                data,
                                owner: None,
                                timestamp: None,
                            })],
                        }),
                    };
                    let script = self.add_stage_op(
                        index,
                        file_op,
                        "preparing inline document".into(),
                        start_line,
                        end_line,
                    )?;
                    inputs.push(script);
                    mounts.push(Mount {
                        input: Some(inputs.len() as u32 - 1),
                        selector: "/".into(),
                        dest: "/dev/pipes/".into(),
                        output: None,
                        readonly: true,
                        kind: MountKind::Bind,
                    });
                    args = vec![format!("/dev/pipes/{}", first.name)];
                } else {
                    args = vec![data];
                }
                display.push_str(&format!(" ({})", summarize_heredoc(&first.data)));
            } else {
                let mut text = args[0].clone();
                for heredoc in &run.command.files {
                    text.push('\n');
                    text.push_str(&heredoc.data);
                    text.push_str(&heredoc.name);
                }
                args = vec![text];
            }
        }
        if run.command.prepend_shell {
            args = self.with_shell(
                index,
                &CommandLine {
                    args,
                    prepend_shell: true,
                    files: Vec::new(),
                },
            );
        }
        let mut secret_env = Vec::new();
        let cwd = self.states[index].cwd.clone();
        for mount in &parsed {
            match mount.mount_type {
                // `parse_mounts` resolved the ids, the secret targets and the ssh sockets.
                MountType::Secret => {
                    let id = mount.id.clone().unwrap_or_default();
                    if let Some(name) = &mount.env {
                        secret_env.push(SecretEnv {
                            id: id.clone(),
                            name: name.clone(),
                            required: mount.required,
                        });
                    }
                    if let Some(target) = &mount.target {
                        mounts.push(Mount {
                            input: None,
                            selector: "/".into(),
                            dest: mount_destination(&cwd, Some(target))?,
                            output: None,
                            readonly: true,
                            kind: MountKind::Secret(SecretMount {
                                id,
                                uid: mount.uid.unwrap_or(0),
                                gid: mount.gid.unwrap_or(0),
                                mode: mount.mode.unwrap_or(0o400),
                                required: mount.required,
                            }),
                        });
                    }
                }
                MountType::Ssh => {
                    mounts.push(Mount {
                        input: None,
                        selector: "/".into(),
                        dest: mount_destination(&cwd, mount.target.as_deref())?,
                        output: None,
                        readonly: true,
                        kind: MountKind::Ssh(SshMount {
                            id: mount.id.clone().unwrap_or_else(|| "default".into()),
                            uid: mount.uid.unwrap_or(0),
                            gid: mount.gid.unwrap_or(0),
                            mode: mount.mode.unwrap_or(0o600),
                            required: mount.required,
                        }),
                    });
                }
                MountType::Tmpfs => {
                    mounts.push(Mount {
                        input: None,
                        selector: "/".into(),
                        dest: mount_destination(&cwd, mount.target.as_deref())?,
                        output: None,
                        readonly: false,
                        kind: MountKind::Tmpfs {
                            size: mount.size_limit.unwrap_or(0),
                        },
                    });
                }
                MountType::Bind | MountType::Cache => {
                    // Without a target BuildKit mounts at the working directory.
                    let dest = mount_destination(&cwd, mount.target.as_deref())?;
                    let source_path = normalize_path("/", mount.source.as_deref().unwrap_or(""));
                    let mut input = match (&mount.from, mount.mount_type) {
                        (Some(from), _) => {
                            let source = self.find_source(index, from)?;
                            self.ensure_image_stage(source)?;
                            Some(self.stage_output(source, "mount", index)?)
                        }
                        (None, MountType::Bind) => {
                            Some(self.context_source(std::slice::from_ref(&source_path))?)
                        }
                        (None, _) => None,
                    };
                    let mut selector = source_path.clone();
                    if mount.mount_type == MountType::Cache
                        && source_path == "/"
                        && (mount.uid.is_some() || mount.gid.is_some() || mount.mode.is_some())
                    {
                        let mut file_inputs = Vec::new();
                        let base_index = input.as_ref().map(|input| {
                            file_inputs.push(input.clone());
                            0
                        });
                        let op = Op {
                            inputs: file_inputs,
                            platform: platform.clone(),
                            kind: OpKind::File(FileOp {
                                base: base_index,
                                actions: vec![FileAction::Mkdir(MkdirAction {
                                    path: "/cache".into(),
                                    mode: mount.mode.unwrap_or(0o755),
                                    make_parents: false,
                                    owner: Some(Chown {
                                        user: Some(UserOrId::Id(mount.uid.unwrap_or(0))),
                                        group: Some(UserOrId::Id(mount.gid.unwrap_or(0))),
                                    }),
                                    timestamp: None,
                                })],
                            }),
                        };
                        input = Some(self.add_stage_op(
                            index,
                            op,
                            "[internal] setting cache mount permissions".into(),
                            start_line,
                            end_line,
                        )?);
                        selector = "/cache".into();
                    }
                    let input_index = input.map(|input| {
                        inputs.push(input);
                        inputs.len() as u32 - 1
                    });
                    let kind = if mount.mount_type == MountType::Cache {
                        // `parse_mounts` defaults the id to the cleaned target.
                        let id = mount.id.clone().unwrap_or_default();
                        let sharing = match mount.sharing.unwrap_or_default() {
                            run_mount::CacheSharing::Shared => CacheSharing::Shared,
                            run_mount::CacheSharing::Private => CacheSharing::Private,
                            run_mount::CacheSharing::Locked => CacheSharing::Locked,
                        };
                        MountKind::Cache(CacheMount { id, sharing })
                    } else {
                        MountKind::Bind
                    };
                    mounts.push(Mount {
                        input: input_index,
                        selector,
                        dest,
                        output: None,
                        readonly: mount.read_only,
                        kind,
                    });
                }
            }
        }
        let network = match run.network {
            instructions::NetworkMode::Default => NetworkMode::Default,
            instructions::NetworkMode::None => NetworkMode::None,
            instructions::NetworkMode::Host => NetworkMode::Host,
        };
        let security = match run.security {
            instructions::SecurityMode::Sandbox => SecurityMode::Sandbox,
            instructions::SecurityMode::Insecure => SecurityMode::Insecure,
        };
        let state = &self.states[index];
        let env: Vec<String> = state
            .env
            .iter()
            .map(|(key, value)| {
                let mut entry = String::with_capacity(key.len() + 1 + value.len());
                entry.push_str(key);
                entry.push('=');
                entry.push_str(value);
                entry
            })
            .collect();
        let proxy_env: Vec<String> = self
            .proxy_env
            .iter()
            .filter(|entry| {
                entry
                    .split('=')
                    .next()
                    .is_some_and(|key| env_get(&state.env, key).is_none())
            })
            .cloned()
            .collect();
        let history = run_command_history(&args, &state.build_args, &state.env);
        let exec = ExecOp {
            args,
            env,
            cwd: state.cwd.clone(),
            user: state.user.clone(),
            network,
            security,
            hostname: self.options.hostname.clone(),
            mounts,
            secret_env,
            proxy_env,
        };
        let name = self.progress_name(index, &display, single_stage);
        let op = Op {
            inputs,
            platform,
            kind: OpKind::Exec(exec),
        };
        let output = self.add_stage_op(index, op, name, start_line, end_line)?;
        self.states[index].filesystem = Some(output);
        self.commit(index, history, true);
        Ok(())
    }

    fn dispatch_copy(
        &mut self,
        index: usize,
        copy: &CopyRequest<'_>,
        name_text: &str,
        single_stage: bool,
        start_line: usize,
        end_line: usize,
    ) -> Result<(), Failure> {
        let instruction = if copy.is_add { "ADD" } else { "COPY" };
        let chown = self.expand_borrowed(index, copy.chown.unwrap_or_default())?;
        let chmod_text = self.expand_borrowed(index, copy.chmod.unwrap_or_default())?;
        let checksum = self.expand_borrowed(index, copy.checksum.unwrap_or_default())?;
        let mut sources = Vec::with_capacity(copy.files.sources.len());
        for source in &copy.files.sources {
            sources.push(self.expand_borrowed(index, source)?);
        }
        let dest_written = self.expand_borrowed(index, &copy.files.dest)?;
        let mut contents = Vec::new();
        for content in &copy.files.contents {
            let (name, data) = (&content.path, &content.data);
            let data = if content.expand {
                let mut lexer = crate::shell::Lexer::new('\\');
                lexer.skip_process_quotes = true;
                lexer
                    .expand_word(data, &PairsEnv(&self.states[index].env))
                    .map_err(|error| error.to_string())?
            } else {
                data.clone()
            };
            contents.push((name.clone(), data));
        }
        if sources.len() + contents.len() > 1 && !dest_written.ends_with('/') {
            return Err(format!(
                "When using {instruction} with more than one source file, the destination must be a directory and end with a /"
            ));
        }
        let state = &self.states[index];
        let platform = state.platform.clone();
        let dest = path_relative_to_workdir(&state.cwd, &dest_written);
        let owner = if chown.is_empty() {
            None
        } else {
            Some(parse_chown(&chown)?)
        };
        let mode = if chmod_text.is_empty() {
            None
        } else {
            Some(match parse_chmod(&chmod_text)? {
                ParsedChmod::Octal(bits) => Chmod::Octal(bits),
                ParsedChmod::Symbolic(_) => Chmod::Symbolic(chmod_text.to_string()),
            })
        };
        if !checksum.is_empty() {
            if sources.len() != 1 {
                return Err("checksum can't be specified for multiple sources".into());
            }
            if !is_http_source(&sources[0]) && !is_git_source(&sources[0]) {
                return Err("checksum requires HTTP(S) or Git sources".into());
            }
        }
        let mut message = String::with_capacity(64);
        message.push_str(instruction);
        if copy.parents {
            message.push_str(" --parents");
        }
        if !chown.is_empty() {
            message.push_str(&format!(" --chown={chown}"));
        }
        if !chmod_text.is_empty() {
            message.push_str(&format!(" --chmod={chmod_text}"));
        }

        // The copy's source filesystem for local sources.
        let local_input = match copy.from {
            Some(from) => {
                let source = self.find_source(index, from)?;
                self.ensure_image_stage(source)?;
                Some(self.stage_output(source, "copy", index)?)
            }
            None => {
                let local: Vec<&str> = sources
                    .iter()
                    .map(|source| source.as_ref())
                    .filter(|source| !is_http_source(source) && !is_git_source(source))
                    .collect();
                if local.is_empty() {
                    None
                } else {
                    Some(self.context_source(&local)?)
                }
            }
        };
        let mut inputs: Vec<Input> = Vec::new();
        let input_index = |inputs: &mut Vec<Input>, input: Input| -> u32 {
            match inputs.iter().position(|existing| *existing == input) {
                Some(position) => position as u32,
                None => {
                    inputs.push(input);
                    inputs.len() as u32 - 1
                }
            }
        };
        let base_copy = |source_input: u32, source_path: String| CopyAction {
            source_input,
            source_path,
            dest_path: dest.clone(),
            owner: owner.clone(),
            mode: mode.clone(),
            follow_symlinks: false,
            dir_contents_only: false,
            attempt_unpack: false,
            create_dest_path: true,
            allow_wildcard: false,
            allow_empty_wildcard: false,
            always_replace_existing_dest_paths: false,
            include_patterns: Vec::new(),
            exclude_patterns: copy.excludes.to_vec(),
            required_paths: Vec::new(),
            timestamp: None,
        };
        let mut actions = Vec::new();
        for source in &sources {
            message.push(' ');
            message.push_str(source);
            if is_git_source(source) {
                if !copy.is_add {
                    return Err("source can't be a git ref for COPY".into());
                }
                let (remote, reference, subdir) = split_git_url(source);
                let op = Op {
                    inputs: vec![],
                    platform: None,
                    kind: OpKind::Source(SourceOp::Git(GitSource {
                        remote,
                        reference,
                        subdir,
                        keep_git_dir: copy.keep_git_dir.unwrap_or(false),
                        checksum: (!checksum.is_empty()).then(|| checksum.to_string()),
                    })),
                };
                let git =
                    self.add_stage_op(index, op, name_text.to_string(), start_line, end_line)?;
                let position = input_index(&mut inputs, git);
                actions.push(FileAction::Copy(base_copy(position, "/".into())));
            } else if is_http_source(source) {
                if !copy.is_add {
                    return Err("source can't be a URL for COPY".into());
                }
                let filename = url_filename(source);
                let checksum_digest = if checksum.is_empty() {
                    None
                } else {
                    Some(kiln_types::Digest::parse(&checksum).map_err(|error| error.to_string())?)
                };
                let op = Op {
                    inputs: vec![],
                    platform: None,
                    kind: OpKind::Source(SourceOp::Http(HttpSource {
                        url: source.to_string(),
                        checksum: checksum_digest,
                        filename: filename.clone(),
                        permissions: None,
                    })),
                };
                let http =
                    self.add_stage_op(index, op, name_text.to_string(), start_line, end_line)?;
                let position = input_index(&mut inputs, http);
                let mut action = base_copy(position, filename);
                action.attempt_unpack = copy.unpack.unwrap_or(false);
                actions.push(FileAction::Copy(action));
            } else {
                let local = local_input.clone().ok_or("no source for copy")?;
                let position = input_index(&mut inputs, local);
                let mut source_path = source.to_string();
                let mut include_patterns = Vec::new();
                let mut required_paths = Vec::new();
                if copy.parents {
                    let (parent, pattern) = match source.split_once("/./") {
                        Some((parent, pattern)) => (parent.to_string(), pattern.to_string()),
                        None => ("/".to_string(), source.to_string()),
                    };
                    let pattern = normalize_path("/", &pattern);
                    include_patterns.push(pattern.trim_start_matches('/').to_string());
                    if !contains_wildcards(&parent) && !contains_wildcards(&pattern) {
                        required_paths.push(normalize_path("/", &format!("{parent}/{pattern}")));
                    }
                    source_path = parent;
                }
                let mut action = base_copy(position, normalize_path("/", &source_path));
                action.follow_symlinks = true;
                action.dir_contents_only = true;
                action.allow_wildcard = true;
                action.allow_empty_wildcard = true;
                action.attempt_unpack = if copy.is_add {
                    copy.unpack.unwrap_or(true)
                } else {
                    false
                };
                action.include_patterns = include_patterns;
                action.required_paths = required_paths;
                actions.push(FileAction::Copy(action));
            }
        }
        for (name, data) in &contents {
            message.push_str(&format!(" <<{name}"));
            let op = Op {
                inputs: vec![],
                platform: platform.clone(),
                kind: OpKind::File(FileOp {
                    base: None,
                    actions: vec![FileAction::Mkfile(MkfileAction {
                        path: format!("/{name}"),
                        mode: 0o644,
                        data: data.clone(),
                        owner: None,
                        timestamp: self.epoch,
                    })],
                }),
            };
            let document = self.add_stage_op(
                index,
                op,
                "preparing inline document".into(),
                start_line,
                end_line,
            )?;
            let position = input_index(&mut inputs, document);
            let mut action = base_copy(position, format!("/{name}"));
            action.exclude_patterns.clear();
            actions.push(FileAction::Copy(action));
        }
        message.push(' ');
        message.push_str(&dest_written);
        message.push_str(" # buildkit");

        let current = self.states[index]
            .filesystem
            .clone()
            .ok_or("stage has no filesystem")?;
        let output = if copy.link && chmod_text.is_empty() {
            let name = self.progress_name(index, name_text, single_stage);
            let layer = Op {
                inputs,
                platform: platform.clone(),
                kind: OpKind::File(FileOp {
                    base: None,
                    actions,
                }),
            };
            let layer = self.add_stage_op(index, layer, name.clone(), start_line, end_line)?;
            let merge = Op {
                inputs: vec![current, layer],
                platform,
                kind: OpKind::Merge(MergeOp {}),
            };
            let link_name = name.replacen("] ", "] LINK ", 1);
            self.add_stage_op(index, merge, link_name, start_line, end_line)?
        } else {
            let mut all_inputs = vec![current];
            let shift = 1u32;
            for action in actions.iter_mut() {
                if let FileAction::Copy(copy_action) = action {
                    copy_action.source_input += shift;
                }
            }
            all_inputs.extend(inputs);
            let name = self.progress_name(index, name_text, single_stage);
            let op = Op {
                inputs: all_inputs,
                platform,
                kind: OpKind::File(FileOp {
                    base: Some(0),
                    actions,
                }),
            };
            self.add_stage_op(index, op, name, start_line, end_line)?
        };
        self.states[index].filesystem = Some(output);
        self.commit(index, message, true);
        Ok(())
    }
}

fn count_layer_commands(commands: &[StageCommand]) -> usize {
    commands
        .iter()
        .filter(|command| {
            matches!(
                command.instruction,
                Instruction::Run(_)
                    | Instruction::Copy(_)
                    | Instruction::Add(_)
                    | Instruction::Workdir(_)
            )
        })
        .count()
}

/// COPY and ADD, seen alike by `dispatch_copy`.
struct CopyRequest<'c> {
    is_add: bool,
    files: &'c SourcesAndDest,
    from: Option<&'c str>,
    chown: Option<&'c str>,
    chmod: Option<&'c str>,
    link: bool,
    parents: bool,
    excludes: &'c [String],
    checksum: Option<&'c str>,
    keep_git_dir: Option<bool>,
    unpack: Option<bool>,
}

impl<'c> CopyRequest<'c> {
    /// The request of a COPY or ADD; `None` for other instructions.
    fn of(instruction: &'c Instruction) -> Option<Self> {
        match instruction {
            Instruction::Copy(copy) => Some(Self::copy(copy)),
            Instruction::Add(add) => Some(Self::add(add)),
            _ => None,
        }
    }

    fn copy(copy: &'c CopyInstruction) -> Self {
        CopyRequest {
            is_add: false,
            files: &copy.files,
            from: copy.from.as_deref(),
            chown: copy.chown.as_deref(),
            chmod: copy.chmod.as_deref(),
            link: copy.link,
            parents: copy.parents,
            excludes: &copy.excludes,
            checksum: None,
            keep_git_dir: None,
            unpack: None,
        }
    }

    fn add(add: &'c AddInstruction) -> Self {
        CopyRequest {
            is_add: true,
            files: &add.files,
            from: None,
            chown: add.chown.as_deref(),
            chmod: add.chmod.as_deref(),
            link: add.link,
            parents: false,
            excludes: &add.excludes,
            checksum: add.checksum.as_deref(),
            keep_git_dir: add.keep_git_dir,
            unpack: add.unpack,
        }
    }
}

/// Docker's image config `Env` update: replace in place, else append.
fn add_env(image: &mut ImageSpec, key: &str, value: &str) {
    let env = image.config.env.get_or_insert_with(Vec::new);
    let mut entry = String::with_capacity(key.len() + 1 + value.len());
    entry.push_str(key);
    entry.push('=');
    entry.push_str(value);
    // `existing`'s name (up to its first `=`) is `key`: a key with a `=` never matches.
    let same_name = |existing: &String| {
        !key.contains('=')
            && existing.len() > key.len()
            && existing.as_bytes()[key.len()] == b'='
            && existing.starts_with(key)
    };
    match env.iter_mut().find(|existing| same_name(existing)) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

fn default_shell(os: &str) -> Vec<String> {
    if os == "windows" {
        vec!["cmd".into(), "/S".into(), "/C".into()]
    } else {
        vec!["/bin/sh".into(), "-c".into()]
    }
}

/// `path.Join(base, path)` cleaned, absolute.
fn normalize_path(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean_path(path)
    } else {
        clean_path(&[base, "/", path].concat())
    }
}

/// A new WORKDIR against the current one.
fn normalize_workdir(current: &str, path: &str) -> String {
    let current = if current.is_empty() { "/" } else { current };
    normalize_path(current, path)
}

/// A COPY destination: absolute, keeping a trailing `/` (and `.` meaning "into the workdir").
fn path_relative_to_workdir(cwd: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let keep_slash = dest.ends_with('/') || dest.ends_with("/.");
    let mut normalized = normalize_path(cwd, dest);
    if keep_slash && !normalized.ends_with('/') {
        normalized.push('/');
    }
    normalized
}

/// A context path as an include pattern (relative, `.` for the root).
fn context_relative(path: &str) -> String {
    let cleaned = clean_path(&["/", path].concat());
    match cleaned.trim_start_matches('/') {
        "" => ".".to_string(),
        rest => rest.to_string(),
    }
}

/// Where a RUN mount goes: its target against the working directory, or the working
/// directory itself when it has none (as BuildKit). The root is refused, as BuildKit does.
fn mount_destination(cwd: &str, target: Option<&str>) -> Result<String, Failure> {
    let absolute = normalize_path(cwd, target.unwrap_or_default());
    if absolute != "/" {
        return Ok(absolute);
    }
    Err(match target.filter(|target| !target.is_empty()) {
        Some(target) => format!("invalid mount target \"/\" (target={target} is the root)"),
        None => "invalid mount target \"/\": a mount without target= goes on the working directory, which is /; set target= or WORKDIR".to_string(),
    })
}

fn base_name(path: &str) -> String {
    let cleaned = clean_path(path);
    cleaned
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty())
        .unwrap_or("/")
        .to_string()
}

fn contains_wildcards(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'*' | b'?' | b'[' => return true,
            b'\\' => index += 1,
            _ => {}
        }
        index += 1;
    }
    false
}

/// `user[:group]` -> owner, numbers as ids.
fn parse_chown(text: &str) -> Result<Chown, Failure> {
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    let part = |value: &str| -> Option<UserOrId> {
        if value.is_empty() {
            None
        } else {
            Some(
                value
                    .parse::<u32>()
                    .map(UserOrId::Id)
                    .unwrap_or_else(|_| UserOrId::Name(value.to_string())),
            )
        }
    };
    Ok(Chown {
        user: part(user),
        group: group.and_then(part),
    })
}

fn is_http_source(source: &str) -> bool {
    (source.starts_with("http://") || source.starts_with("https://")) && !is_git_source(source)
}

/// A git URL as BuildKit's `ParseGitRef` sees one (the common forms): `git@host:repo`,
/// `git://`, `ssh://`, or an http(s) URL whose path ends in `.git`.
fn is_git_source(source: &str) -> bool {
    if source.starts_with("git@") || source.starts_with("git://") || source.starts_with("ssh://") {
        return true;
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        let without_fragment = source.split('#').next().unwrap_or(source);
        return without_fragment.ends_with(".git");
    }
    false
}

/// remote, ref, subdir from `remote#ref:subdir`.
fn split_git_url(source: &str) -> (String, String, String) {
    match source.split_once('#') {
        Some((remote, fragment)) => {
            let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
            (
                remote.to_string(),
                reference.to_string(),
                subdir.to_string(),
            )
        }
        None => (source.to_string(), String::new(), String::new()),
    }
}

/// The file name an ADD of a URL produces: the URL path's last element, or `__unnamed__`.
fn url_filename(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .find('/')
        .map_or("", |slash| &after_scheme[slash..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let base = base_name(path);
    if base == "/" || base == "." || path.is_empty() {
        "__unnamed__".into()
    } else {
        base
    }
}

fn is_lone_heredoc(word: &str, name: &str) -> bool {
    let word = word.trim();
    let Some(rest) = word.strip_prefix("<<") else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    rest.trim_matches(|c| c == '"' || c == '\'') == name
}

fn summarize_heredoc(document: &str) -> String {
    let document = document.trim();
    let mut lines = document.lines();
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// `RUN |N K=V ... args # buildkit` for history, as BuildKit's `runCommandString`.
fn run_command_history(
    args: &[String],
    build_args: &[(String, Option<String>)],
    env: &[(String, String)],
) -> String {
    // Each name once, where it was first declared, with its last value. A stage declares a
    // few dozen names at most, so a scan beats hashing them.
    let mut entries: Vec<(&str, &str)> = Vec::with_capacity(build_args.len());
    for (key, value) in build_args {
        let value = env_get(env, key).or(value.as_deref()).unwrap_or_default();
        match entries.iter_mut().find(|(existing, _)| *existing == key) {
            Some(entry) => entry.1 = value,
            None => entries.push((key, value)),
        }
    }
    let length = entries
        .iter()
        .map(|(key, value)| key.len() + value.len() + 2)
        .chain(args.iter().map(|arg| arg.len() + 1))
        .sum::<usize>();
    let mut text = String::with_capacity(length + 24);
    text.push_str("RUN");
    let entries_empty = entries.is_empty();
    if !entries_empty {
        let _ = write!(text, " |{}", entries.len());
        for (key, value) in entries {
            text.extend([" ", key, "=", value]);
        }
    }
    if entries_empty && args.is_empty() {
        // BuildKit's `RUN %s # buildkit` of an empty string.
        text.push(' ');
    }
    for arg in args {
        text.extend([" ", arg.as_str()]);
    }
    text.push_str(" # buildkit");
    text
}

/// STOPSIGNAL's check, as BuildKit's (moby/sys `signal.ParseSignal` on Linux): a whole
/// number other than 0 (Go's `Atoi`: optional sign, decimal digits, within 64 bits), or a
/// signal name of Linux's table, any case, with or without `SIG`.
fn validate_signal(signal: &str) -> Result<(), Failure> {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    let invalid = || {
        format!("invalid signal: {signal} (expected a signal name such as SIGTERM or TERM, or a non-zero number)")
    };
    if let Ok(number) = signal.parse::<i64>() {
        return if number == 0 { Err(invalid()) } else { Ok(()) };
    }
    let upper = signal.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) {
        return Ok(());
    }
    // The real-time signals: RTMIN+1 to RTMIN+15 and RTMAX-14 to RTMAX-1, written exactly so.
    let offset = name
        .strip_prefix("RTMIN+")
        .map(|offset| (offset, 15))
        .or_else(|| name.strip_prefix("RTMAX-").map(|offset| (offset, 14)));
    if let Some((offset, largest)) = offset {
        let plain_number = !offset.starts_with('0') && offset.bytes().all(|b| b.is_ascii_digit());
        if plain_number
            && offset
                .parse::<u32>()
                .is_ok_and(|n| (1..=largest).contains(&n))
        {
            return Ok(());
        }
    }
    Err(invalid())
}

/// Go's `%+v` of BuildKit's HealthcheckConfig, for history.
fn health_text(config: &HealthConfig) -> String {
    let test = config.test.clone().unwrap_or_default();
    format!(
        "{{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        test.join(" "),
        go_duration(config.interval.unwrap_or(0)),
        go_duration(config.timeout.unwrap_or(0)),
        go_duration(config.start_period.unwrap_or(0)),
        go_duration(config.start_interval.unwrap_or(0)),
        config.retries.unwrap_or(0)
    )
}

/// Go's `time.Duration.String()` for whole units.
fn go_duration(nanoseconds: i64) -> String {
    if nanoseconds == 0 {
        return "0s".into();
    }
    let negative = nanoseconds < 0;
    let mut value = nanoseconds.unsigned_abs();
    let sign = if negative { "-" } else { "" };
    if value < 1_000_000_000 {
        let (unit, divisor) = if value < 1_000 {
            ("ns", 1)
        } else if value < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_fraction(value, divisor));
    }
    let hours = value / 3_600_000_000_000;
    value %= 3_600_000_000_000;
    let minutes = value / 60_000_000_000;
    value %= 60_000_000_000;
    let seconds = trim_fraction(value, 1_000_000_000);
    let mut out = String::from(sign);
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{seconds}s"));
    out
}

fn trim_fraction(value: u64, divisor: u64) -> String {
    let whole = value / divisor;
    let fraction = value % divisor;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = divisor.to_string().len() - 1;
    let text = format!("{fraction:0digits$}");
    format!("{whole}.{}", text.trim_end_matches('0'))
}

#[allow(dead_code)]
fn quote(text: &str) -> String {
    go_quote(text)
}

#[cfg(test)]
mod tests {
    use super::validate_signal;

    #[test]
    fn stop_signals_as_buildkit_accepts_them() {
        for good in [
            "SIGTERM",
            "TERM",
            "term",
            "SigKill",
            "sigusr1",
            "9",
            "+9",
            "-1",
            "100",
            "SIGCLD",
            "SIGPOLL",
            "SIGRTMIN",
            "RTMIN+1",
            "sigrtmin+15",
            "SIGRTMAX-14",
            "RTMAX-1",
            "RTMAX",
            "SIGSTKFLT",
            "IOT",
        ] {
            assert_eq!(validate_signal(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "0",
            "+0",
            "-0",
            "00",
            "SIG",
            "SIGNOPE",
            "SIGSIGTERM",
            "TERM ",
            " 9",
            "9s",
            "RTMIN+0",
            "RTMIN+16",
            "RTMIN+01",
            "RTMIN-1",
            "RTMAX+1",
            "RTMAX-15",
            "RTMAX-0",
            "SIGEMT",
            "99999999999999999999",
            "0x9",
            "SIGRTMIN+",
            "KILL,TERM",
        ] {
            let error = validate_signal(bad).unwrap_err();
            assert!(
                error.starts_with(&format!("invalid signal: {bad} (")),
                "{error}"
            );
        }
    }
}
