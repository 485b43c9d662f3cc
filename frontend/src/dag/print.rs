//! Printers for a definition: text (one op per line), graphviz dot, and JSON (everything).

use std::fmt::Write as _;

use super::op::*;
use super::{Definition, Vertex};

/// The formats `kiln build --print-dag` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrintFormat {
    #[default]
    Text,
    Dot,
    Json,
}

impl std::str::FromStr for PrintFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(PrintFormat::Text),
            "dot" => Ok(PrintFormat::Dot),
            "json" => Ok(PrintFormat::Json),
            other => Err(format!(
                "unknown DAG format {other:?} (expected text, dot or json)"
            )),
        }
    }
}

/// One line per op: position, short digest, kind, summary, then the inputs it reads.
pub fn print_text(definition: &Definition) -> String {
    let mut out = String::new();
    for (position, vertex) in definition.vertices().iter().enumerate() {
        let _ = write!(
            out,
            "#{position} {} {:<7} {}",
            vertex.digest.short(),
            vertex.op.kind.name(),
            summary(definition, vertex)
        );
        if !vertex.op.inputs.is_empty() {
            out.push_str("  <- ");
            let inputs: Vec<String> = vertex
                .op
                .inputs
                .iter()
                .map(|input| input_name(definition, input))
                .collect();
            out.push_str(&inputs.join(", "));
        }
        out.push('\n');
    }
    out
}

/// A graphviz digraph, edges from input to reader.
pub fn print_dot(definition: &Definition) -> String {
    let mut out =
        String::from("digraph dag {\n  rankdir=TB;\n  node [shape=box, fontname=monospace];\n");
    for vertex in definition.vertices() {
        let mut label = format!("{} {}", vertex.op.kind.name(), vertex.digest.short());
        if !vertex.metadata.name.is_empty() {
            label.push('\n');
            label.push_str(&truncate(&vertex.metadata.name, 80));
        }
        let _ = writeln!(
            out,
            "  \"{}\" [label={}];",
            vertex.digest.short(),
            dot_quote(&label)
        );
    }
    for vertex in definition.vertices() {
        for input in &vertex.op.inputs {
            let _ = write!(
                out,
                "  \"{}\" -> \"{}\"",
                input.digest.short(),
                vertex.digest.short()
            );
            if input.output != 0 {
                let _ = write!(out, " [label=\"{}\"]", input.output);
            }
            out.push_str(";\n");
        }
    }
    out.push_str("}\n");
    out
}

/// The whole definition as pretty JSON: `{"ops": [{digest, op, metadata}, ...]}`.
pub fn print_json(definition: &Definition) -> String {
    let document = serde_json::json!({ "ops": definition.vertices() });
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

fn dot_quote(text: &str) -> String {
    let mut out = String::from("\"");
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let mut short: String = text.chars().take(limit).collect();
    short.push_str("...");
    short
}

fn input_name(definition: &Definition, input: &Input) -> String {
    let position = definition.position(&input.digest).map_or_else(
        || input.digest.short().to_string(),
        |position| format!("#{position}"),
    );
    if input.output == 0 {
        position
    } else {
        format!("{position}:{}", input.output)
    }
}

fn op_input(definition: &Definition, vertex: &Vertex, index: u32) -> String {
    match vertex.op.inputs.get(index as usize) {
        Some(input) => input_name(definition, input),
        None => format!("?{index}"),
    }
}

fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn quote_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

fn summary(definition: &Definition, vertex: &Vertex) -> String {
    let mut out = String::new();
    match &vertex.op.kind {
        OpKind::Source(SourceOp::Image(image)) => {
            let _ = write!(out, "{} platform={}", image.reference, image.platform);
        }
        OpKind::Source(SourceOp::Local(local)) => {
            let _ = write!(out, "{}", local.name);
            if !local.include_patterns.is_empty() {
                let _ = write!(out, " include={}", quote_list(&local.include_patterns));
            }
            if !local.exclude_patterns.is_empty() {
                let _ = write!(out, " exclude={}", quote_list(&local.exclude_patterns));
            }
        }
        OpKind::Source(SourceOp::Scratch) => out.push_str("scratch"),
        OpKind::Source(SourceOp::Http(http)) => {
            let _ = write!(out, "{} filename={}", http.url, quote(&http.filename));
            if let Some(checksum) = &http.checksum {
                let _ = write!(out, " checksum={checksum}");
            }
            if let Some(mode) = http.permissions {
                let _ = write!(out, " mode={mode:04o}");
            }
        }
        OpKind::Source(SourceOp::Git(git)) => {
            let _ = write!(out, "{}", git.remote);
            if !git.reference.is_empty() {
                let _ = write!(out, "#{}", git.reference);
            }
            if !git.subdir.is_empty() {
                let _ = write!(out, " subdir={}", git.subdir);
            }
            if git.keep_git_dir {
                out.push_str(" keep-git-dir");
            }
            if let Some(checksum) = &git.checksum {
                let _ = write!(out, " checksum={checksum}");
            }
        }
        OpKind::Exec(exec) => exec_summary(&mut out, definition, vertex, exec),
        OpKind::File(file) => {
            let base = file.base.map_or_else(
                || "scratch".to_string(),
                |index| op_input(definition, vertex, index),
            );
            let _ = write!(out, "on {base}:");
            for (count, action) in file.actions.iter().enumerate() {
                out.push_str(if count == 0 { " " } else { "; " });
                action_summary(&mut out, definition, vertex, action);
            }
        }
        OpKind::Merge(_) => {
            let inputs: Vec<String> = (0..vertex.op.inputs.len() as u32)
                .map(|index| op_input(definition, vertex, index))
                .collect();
            out.push_str(&inputs.join(" + "));
        }
    }
    out
}

fn exec_summary(out: &mut String, definition: &Definition, vertex: &Vertex, exec: &ExecOp) {
    let _ = write!(out, "{} cwd={}", quote_list(&exec.args), quote(&exec.cwd));
    if !exec.user.is_empty() {
        let _ = write!(out, " user={}", quote(&exec.user));
    }
    let _ = write!(out, " env={}", quote_list(&exec.env));
    if exec.network != NetworkMode::Default {
        let _ = write!(out, " network={:?}", exec.network);
    }
    if exec.security != SecurityMode::Sandbox {
        let _ = write!(out, " security={:?}", exec.security);
    }
    if let Some(hostname) = &exec.hostname {
        let _ = write!(out, " hostname={hostname}");
    }
    for mount in &exec.mounts {
        let source = mount.input.map_or_else(
            || "-".to_string(),
            |index| op_input(definition, vertex, index),
        );
        let _ = write!(out, " mount[{} {}", mount.dest, mount_kind(&mount.kind));
        if mount.input.is_some() || mount.selector != "/" {
            let _ = write!(out, " from={source}:{}", mount.selector);
        }
        if mount.readonly {
            out.push_str(" ro");
        }
        if let Some(output) = mount.output {
            let _ = write!(out, " out={output}");
        }
        out.push(']');
    }
    for secret in &exec.secret_env {
        let _ = write!(
            out,
            " secret-env[{}={} required={}]",
            secret.name, secret.id, secret.required
        );
    }
    if !exec.proxy_env.is_empty() {
        let _ = write!(
            out,
            " proxy-env(not digested)={}",
            quote_list(&exec.proxy_env)
        );
    }
}

fn mount_kind(kind: &MountKind) -> String {
    match kind {
        MountKind::Bind => "bind".into(),
        MountKind::Cache(cache) => {
            format!("cache id={} sharing={:?}", quote(&cache.id), cache.sharing)
        }
        MountKind::Tmpfs { size } => format!("tmpfs size={size}"),
        MountKind::Secret(secret) => format!(
            "secret id={} uid={} gid={} mode={:04o} required={}",
            quote(&secret.id),
            secret.uid,
            secret.gid,
            secret.mode,
            secret.required
        ),
        MountKind::Ssh(ssh) => format!(
            "ssh id={} uid={} gid={} mode={:04o} required={}",
            quote(&ssh.id),
            ssh.uid,
            ssh.gid,
            ssh.mode,
            ssh.required
        ),
    }
}

fn chown_text(owner: &Option<Chown>) -> String {
    let Some(owner) = owner else {
        return String::new();
    };
    let part = |value: &Option<UserOrId>| match value {
        None => String::new(),
        Some(UserOrId::Name(name)) => name.clone(),
        Some(UserOrId::Id(id)) => id.to_string(),
    };
    let mut text = format!(" chown={}", part(&owner.user));
    if owner.group.is_some() {
        let _ = write!(text, ":{}", part(&owner.group));
    }
    text
}

fn action_summary(out: &mut String, definition: &Definition, vertex: &Vertex, action: &FileAction) {
    match action {
        FileAction::Copy(copy) => {
            let _ = write!(
                out,
                "copy {}:{} -> {}",
                op_input(definition, vertex, copy.source_input),
                quote(&copy.source_path),
                quote(&copy.dest_path)
            );
            out.push_str(&chown_text(&copy.owner));
            match &copy.mode {
                Some(Chmod::Octal(mode)) => {
                    let _ = write!(out, " chmod={mode:04o}");
                }
                Some(Chmod::Symbolic(mode)) => {
                    let _ = write!(out, " chmod={mode}");
                }
                None => {}
            }
            let flags = [
                (copy.follow_symlinks, "follow"),
                (copy.dir_contents_only, "contents"),
                (copy.attempt_unpack, "unpack"),
                (copy.create_dest_path, "mkdirp"),
                (copy.allow_wildcard, "wildcard"),
                (copy.allow_empty_wildcard, "empty-ok"),
                (copy.always_replace_existing_dest_paths, "replace"),
            ];
            let set: Vec<&str> = flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| *name)
                .collect();
            if !set.is_empty() {
                let _ = write!(out, " ({})", set.join(","));
            }
            if !copy.include_patterns.is_empty() {
                let _ = write!(out, " include={}", quote_list(&copy.include_patterns));
            }
            if !copy.exclude_patterns.is_empty() {
                let _ = write!(out, " exclude={}", quote_list(&copy.exclude_patterns));
            }
            if !copy.required_paths.is_empty() {
                let _ = write!(out, " required={}", quote_list(&copy.required_paths));
            }
            if let Some(timestamp) = copy.timestamp {
                let _ = write!(out, " time={timestamp}");
            }
        }
        FileAction::Mkdir(mkdir) => {
            let _ = write!(out, "mkdir {} mode={:04o}", quote(&mkdir.path), mkdir.mode);
            if mkdir.make_parents {
                out.push_str(" parents");
            }
            out.push_str(&chown_text(&mkdir.owner));
            if let Some(timestamp) = mkdir.timestamp {
                let _ = write!(out, " time={timestamp}");
            }
        }
        FileAction::Mkfile(mkfile) => {
            let _ = write!(
                out,
                "mkfile {} mode={:04o} data={}",
                quote(&mkfile.path),
                mkfile.mode,
                quote(&mkfile.data)
            );
            out.push_str(&chown_text(&mkfile.owner));
            if let Some(timestamp) = mkfile.timestamp {
                let _ = write!(out, " time={timestamp}");
            }
        }
        FileAction::Rm(rm) => {
            let _ = write!(out, "rm {}", quote(&rm.path));
            if rm.allow_not_found {
                out.push_str(" allow-not-found");
            }
            if rm.allow_wildcard {
                out.push_str(" wildcard");
            }
        }
        FileAction::Symlink(link) => {
            let _ = write!(
                out,
                "symlink {} -> {}",
                quote(&link.new_path),
                quote(&link.old_path)
            );
            out.push_str(&chown_text(&link.owner));
        }
    }
}
