//! Build stages: the instructions grouped under each FROM, the ARGs before the first FROM, and
//! stage lookup by name or index (for `--target`, `COPY --from`, `FROM <stage>`).

use super::{parse_instruction, ArgInstruction, Instruction, SourceFile, Span};
use crate::ast::Dockerfile;
use crate::error::{closest, Error};

/// One build stage: a FROM and the instructions up to the next FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lower case.
    pub name: Option<String>,
    /// The base image or stage, unexpanded (may hold `${ARG}` from the meta args).
    pub base_name: String,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
    /// The instructions after FROM, in order.
    pub commands: Vec<Instruction>,
    /// Position among the stages, from 0.
    pub index: usize,
    /// The FROM instruction.
    pub location: Span,
}

/// Groups a parsed Dockerfile into the ARGs before the first FROM (the meta args) and stages.
pub fn parse_stages(
    source: &SourceFile,
    dockerfile: &Dockerfile,
) -> Result<(Vec<ArgInstruction>, Vec<Stage>), Error> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &dockerfile.nodes {
        let instruction = parse_instruction(source, node)?;
        match instruction {
            Instruction::Arg(arg) if stages.is_empty() => meta_args.push(arg),
            Instruction::From(from) => stages.push(Stage {
                name: from.name,
                base_name: from.image,
                platform: from.platform,
                commands: Vec::new(),
                index: stages.len(),
                location: from.span,
            }),
            other => match stages.last_mut() {
                Some(stage) => stage.commands.push(other),
                None => {
                    let message = format!(
                        "no build stage in current context: {} before the first FROM",
                        other.keyword()
                    );
                    return Err(source.error_at(other.span(), message));
                }
            },
        }
    }
    if stages.is_empty() {
        let error = match meta_args.last() {
            Some(arg) => source.error_at(
                &arg.span,
                "dockerfile contains no stages to build: no FROM instruction",
            ),
            None => Error::general(
                source.name(),
                "dockerfile contains no stages to build: the file has no instructions",
            ),
        };
        return Err(error);
    }
    Ok((meta_args, stages))
}

/// The stage a `COPY --from`, `RUN --mount=from=` or `FROM` reference names: a stage name
/// (case-insensitive, as BuildKit) or a stage index; `None` when it names no stage (an image).
pub fn find_stage(stages: &[Stage], reference: &str) -> Option<usize> {
    if let Some(stage) = stages.iter().find(|stage| {
        stage
            .name
            .as_deref()
            .is_some_and(|name| name.eq_ignore_ascii_case(reference))
    }) {
        return Some(stage.index);
    }
    reference.parse::<usize>().ok().filter(|index| {
        *index < stages.len() && reference.bytes().all(|byte| byte.is_ascii_digit())
    })
}

/// The stage to build for `--target` (the last stage when none is given), or an error naming
/// the closest stage name.
pub fn resolve_target(
    source: &SourceFile,
    stages: &[Stage],
    target: Option<&str>,
) -> Result<usize, Error> {
    let Some(target) = target.filter(|target| !target.is_empty()) else {
        return stages.len().checked_sub(1).ok_or_else(|| {
            Error::general(source.name(), "dockerfile contains no stages to build")
        });
    };
    stages
        .iter()
        .find(|stage| {
            stage
                .name
                .as_deref()
                .is_some_and(|name| name.eq_ignore_ascii_case(target))
        })
        .map(|stage| stage.index)
        .ok_or_else(|| {
            let names = stages.iter().filter_map(|stage| stage.name.as_deref());
            Error::general(
                source.name(),
                format!("target stage {target:?} could not be found"),
            )
            .with_suggestion(closest(target, names))
        })
}
