//! The Dockerfile parser: text -> [`Dockerfile`] syntax tree, with BuildKit's exact rules for
//! parser directives, comments, line continuations, the JSON form, flags, per-instruction
//! arguments and heredocs.
//!
//! The parser keeps instructions it does not know (as BuildKit does); the instructions layer
//! rejects them, with [`KNOWN_INSTRUCTIONS`] for its "did you mean".
//!
//! How BuildKit's tree maps onto [`crate::ast`]:
//! - an unknown instruction has `Args::Words(vec![])` (BuildKit keeps one empty argument; the
//!   dump prints it as `""`);
//! - HEALTHCHECK has `Words([type, command...])` (`["NONE"]`, `["CMD", "curl -f x"]`) and
//!   `json_form` tells whether the command was a JSON array;
//! - ONBUILD has `Args::Nested(node)`; its heredocs are on the ONBUILD node (as in BuildKit) and
//!   copied onto the nested node; an empty ONBUILD has `Words(vec![])`;
//! - heredoc bodies of `<<-` are already stripped of leading tabs.
//!
//! Deliberate differences from BuildKit, all on inputs no real Dockerfile has: non-ASCII text in
//! `--flag` words is kept whole (BuildKit reads those bytes one at a time and mangles them); ONBUILD
//! may nest [`MAX_ONBUILD_NESTING`] deep and `${}` [`crate::shell::MAX_SUBSTITUTION_DEPTH`] deep
//! (BuildKit has no limit; kiln's keep the stack safe).

mod dump;
mod heredoc;
mod json;
mod line_parsers;

use crate::ast::{Args, Directive, Dockerfile, Node, Warning};
use crate::error::{Error, Location};
use line_parsers::ParsedArgs;

pub use crate::shell::go_quote;
pub use dump::{dump, dump_node};
pub use heredoc::{chomp_heredoc_content, parse_heredoc};
pub use line_parsers::parse_words;

/// Every instruction the Dockerfile language has, upper case as written in files.
pub const KNOWN_INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Whether `keyword` (any case) is an instruction of the language.
pub fn is_known_instruction(keyword: &str) -> bool {
    KNOWN_INSTRUCTIONS
        .iter()
        .any(|known| known.eq_ignore_ascii_case(keyword))
}

/// The longest line accepted, in bytes, without its newline (BuildKit's scanner limit).
pub const MAX_LINE_LENGTH: usize = 65_535;

/// How deep ONBUILD may wrap ONBUILD before the parser gives up (BuildKit has no limit, and its
/// next layer rejects any `ONBUILD ONBUILD`; kiln keeps one so no input can exhaust the stack).
pub const MAX_ONBUILD_NESTING: usize = 16;

/// The parser directives kiln knows (`# syntax=`, `# escape=`, `# check=`).
pub const DIRECTIVES: &[&str] = &["syntax", "escape", "check"];

/// The default escape character.
pub const DEFAULT_ESCAPE: char = '\\';

/// Parses a Dockerfile given as bytes; text that is not UTF-8 is an error naming its line.
pub fn parse_bytes(file_name: &str, bytes: &[u8]) -> Result<Dockerfile, Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(file_name, text),
        Err(error) => {
            let valid = &bytes[..error.valid_up_to()];
            let line = valid.iter().filter(|&&byte| byte == b'\n').count() + 1;
            let line_start = valid
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(0, |index| index + 1);
            let line_end = bytes[line_start..]
                .iter()
                .position(|&byte| byte == b'\n')
                .map_or(bytes.len(), |index| line_start + index);
            let location = Location {
                file: file_name.to_string(),
                line,
                column: error.valid_up_to() - line_start + 1,
                line_text: String::from_utf8_lossy(&bytes[line_start..line_end])
                    .trim_end_matches('\r')
                    .to_string(),
            };
            Err(Error::new(location, "dockerfile is not valid UTF-8 text"))
        }
    }
}

/// Parses a Dockerfile. `file_name` is only used in error messages.
pub fn parse(file_name: &str, text: &str) -> Result<Dockerfile, Error> {
    Parser::new(file_name, text).run()
}

/// The state of the top-of-file directive reader.
#[derive(Default)]
struct DirectiveReader {
    done: bool,
    seen: Vec<String>,
}

impl DirectiveReader {
    /// Reads `line` as a possible `# name=value` directive. Directives stop at the first line
    /// that is not one; a repeated directive is an error.
    fn read(&mut self, line: &str) -> Result<Option<(String, String)>, String> {
        if self.done {
            return Ok(None);
        }
        let Some(after_hash) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(None);
        };
        let Some((name, value)) = match_directive(after_hash.trim_start()) else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_lowercase();
        if !DIRECTIVES.contains(&name.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        self.seen.push(name.clone());
        Ok(Some((name, value)))
    }
}

/// Go's `\s`.
fn is_regex_space(character: char) -> bool {
    matches!(character, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

/// BuildKit's `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
fn match_directive(text: &str) -> Option<(String, String)> {
    let mut characters = text.char_indices();
    let (_, first) = characters.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_end = text
        .find(|character: char| !character.is_ascii_alphanumeric())
        .unwrap_or(text.len());
    let name = &text[..name_end];
    let after_equals = text[name_end..]
        .trim_start_matches(is_regex_space)
        .strip_prefix('=')?;
    let value = after_equals.trim_matches(is_regex_space);
    if !value.is_empty() {
        return Some((name.to_string(), value.to_string()));
    }
    // Only blanks after `=`: the lazy `(.+?)` still takes one character, the last one.
    let last = after_equals.chars().last()?;
    if after_equals.contains('\n') {
        return None;
    }
    Some((name.to_string(), last.to_string()))
}

/// Whether a line is a comment: `#` after optional white space.
fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes trailing `\r` and `\n`.
fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// Removes a line-continuation escape at the end of `line` (with blanks after it), unless it is
/// itself escaped. Returns the line and whether the instruction ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    if let Some(before) = trimmed.strip_suffix(escape) {
        if before.is_empty() || !before.ends_with(escape) {
            return (before, false);
        }
    }
    (line, true)
}

struct Parser<'a> {
    file_name: &'a str,
    lines: Vec<&'a str>,
    escape: char,
    directive_reader: DirectiveReader,
    directives: Vec<Directive>,
    warnings: Vec<Warning>,
}

impl<'a> Parser<'a> {
    fn new(file_name: &'a str, text: &'a str) -> Parser<'a> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Parser {
            file_name,
            lines: text.split_inclusive('\n').collect(),
            escape: DEFAULT_ESCAPE,
            directive_reader: DirectiveReader::default(),
            directives: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// An error at a 1-based line (0: the whole file), quoting the line.
    fn error_at(&self, line: usize, message: impl Into<String>) -> Error {
        let mut location = Location {
            file: self.file_name.to_string(),
            ..Location::default()
        };
        if let Some(text) = line.checked_sub(1).and_then(|index| self.lines.get(index)) {
            let text = trim_newline(text);
            location.line = line;
            location.column = text
                .chars()
                .take_while(|character| character.is_whitespace())
                .count()
                + 1;
            location.line_text = if text.len() > 200 {
                let cut = (0..=200)
                    .rev()
                    .find(|&index| text.is_char_boundary(index))
                    .unwrap_or(0);
                format!("{}...", &text[..cut])
            } else {
                text.to_string()
            };
        }
        Error::new(location, message)
    }

    /// Trims the newline (and leading white space for a first line), reads a possible
    /// directive, and drops comments. Returns the line and whether it was a directive.
    fn process_line(
        &mut self,
        raw: &'a str,
        line_number: usize,
        strip_leading: bool,
    ) -> Result<(&'a str, bool), Error> {
        let mut token = trim_newline(raw);
        if strip_leading {
            token = token.trim_start();
        }
        let directive = self
            .directive_reader
            .read(token)
            .map_err(|message| self.error_at(line_number, message))?;
        let mut is_directive = false;
        if let Some((name, value)) = directive {
            if name == "escape" {
                self.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        let message =
                            format!("invalid escape token '{value}' does not match ` or \\");
                        return Err(self.error_at(line_number, message));
                    }
                };
            }
            self.directives.push(Directive {
                name,
                value,
                line: line_number,
            });
            is_directive = true;
        }
        Ok((if is_comment(token) { "" } else { token }, is_directive))
    }

    fn run(mut self) -> Result<Dockerfile, Error> {
        if let Some(index) = self
            .lines
            .iter()
            .position(|line| trim_newline_only(line).len() > MAX_LINE_LENGTH)
        {
            let message =
                format!("dockerfile line greater than max allowed size of {MAX_LINE_LENGTH}");
            return Err(self.error_at(index + 1, message));
        }
        let mut nodes: Vec<Node> = Vec::new();
        let mut comments: Vec<String> = Vec::new();
        let mut current_line = 0;
        while current_line < self.lines.len() {
            let raw = self.lines[current_line];
            if is_comment(raw) {
                let comment = after_first_character(raw).trim();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment.to_string());
                }
            }
            let (processed, is_directive) = self.process_line(raw, current_line + 1, true)?;
            if is_directive {
                comments.pop();
            }
            current_line += 1;
            let start_line = current_line;

            let (processed, mut end_of_instruction) = trim_continuation(processed, self.escape);
            if end_of_instruction && processed.is_empty() {
                continue;
            }
            let mut line = processed.to_string();
            let mut has_empty_continuation_line = false;
            while !end_of_instruction && current_line < self.lines.len() {
                let raw = self.lines[current_line];
                let (processed, _) = self.process_line(raw, current_line + 1, false)?;
                current_line += 1;
                if is_comment(raw) {
                    continue;
                }
                if processed.trim_start().is_empty() {
                    has_empty_continuation_line = true;
                    continue;
                }
                let (processed, end) = trim_continuation(processed, self.escape);
                end_of_instruction = end;
                line.push_str(processed);
            }

            if has_empty_continuation_line {
                self.warnings.push(Warning {
                    line: current_line,
                    message: format!("empty continuation line found in: {line}"),
                });
            }

            let mut node = new_node_from_line(&line, self.escape, std::mem::take(&mut comments), 0)
                .map_err(|message| self.error_at(start_line, message))?;
            // The node keeps the joined line as its original text (no copy).
            node.original = line;
            let line = node.original.as_str();

            if can_contain_heredoc(&node) && line.contains("<<") {
                let heredocs = heredoc::heredocs_from_line(line)
                    .map_err(|error| self.error_at(start_line, error.to_string()))?;
                for mut heredoc in heredocs {
                    let mut terminated = false;
                    let mut content = String::new();
                    while current_line < self.lines.len() {
                        let body_line = self.lines[current_line];
                        current_line += 1;
                        let mut candidate = trim_newline(body_line);
                        if heredoc.chomp {
                            candidate = candidate.trim_start_matches('\t');
                        }
                        if candidate == heredoc.name {
                            terminated = true;
                            break;
                        }
                        content.push_str(body_line);
                    }
                    if !terminated {
                        return Err(self.error_at(
                            start_line,
                            format!("unterminated heredoc {}", heredoc.name),
                        ));
                    }
                    heredoc.content = if heredoc.chomp {
                        heredoc::chomp_heredoc_content(&content)
                    } else {
                        content
                    };
                    node.heredocs.push(heredoc);
                }
                if let Args::Nested(inner) = &mut node.args {
                    inner.heredocs = node.heredocs.clone();
                }
            }

            node.start_line = start_line;
            node.end_line = current_line;
            if let Args::Nested(inner) = &mut node.args {
                inner.start_line = start_line;
                inner.end_line = current_line;
            }
            nodes.push(node);
        }

        if nodes.is_empty() {
            return Err(self.error_at(0, "file with no instructions"));
        }
        Ok(Dockerfile {
            directives: self.directives,
            escape: self.escape,
            nodes,
            warnings: self.warnings,
        })
    }
}

/// The line without its final `\n` (a `\r` before it counts as content, as in BuildKit).
fn trim_newline_only(line: &str) -> &str {
    line.strip_suffix('\n').unwrap_or(line)
}

/// The line after its first character (BuildKit takes the comment text after byte 0).
fn after_first_character(line: &str) -> &str {
    let mut characters = line.chars();
    characters.next();
    characters.as_str()
}

/// Splits a joined line and parses its arguments for its instruction. The node's `original`
/// is left empty for the caller to fill.
fn new_node_from_line(
    line: &str,
    escape: char,
    prev_comment: Vec<String>,
    nesting: usize,
) -> Result<Node, String> {
    let (command, flags, rest) = line_parsers::split_command(line, escape);
    let keyword = if command.is_ascii() {
        command.to_ascii_lowercase()
    } else {
        command.to_lowercase()
    };
    let parsed = match keyword.as_str() {
        "add" | "copy" | "volume" => line_parsers::parse_maybe_json_to_list(rest)?,
        "arg" => line_parsers::parse_name_or_name_value(rest, escape),
        "cmd" | "entrypoint" | "run" | "shell" => line_parsers::parse_maybe_json(rest)?,
        "env" => line_parsers::parse_name_value(rest, "ENV", escape)?,
        "label" => line_parsers::parse_name_value(rest, "LABEL", escape)?,
        "expose" | "from" => line_parsers::parse_strings_whitespace_delimited(rest),
        "healthcheck" => line_parsers::parse_health_config(rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => line_parsers::parse_string(rest),
        "onbuild" => {
            if rest.is_empty() {
                ParsedArgs {
                    args: Args::Words(Vec::new()),
                    json_form: false,
                }
            } else {
                if nesting >= MAX_ONBUILD_NESTING {
                    return Err(format!(
                        "ONBUILD nested more than {MAX_ONBUILD_NESTING} deep"
                    ));
                }
                let mut inner = new_node_from_line(rest, escape, Vec::new(), nesting + 1)?;
                inner.original = rest.to_string();
                ParsedArgs {
                    args: Args::Nested(Box::new(inner)),
                    json_form: false,
                }
            }
        }
        // Unknown instructions are kept, without arguments, for the instructions layer to report.
        _ => ParsedArgs {
            args: Args::Words(Vec::new()),
            json_form: false,
        },
    };
    Ok(Node {
        keyword,
        flags,
        args: parsed.args,
        json_form: parsed.json_form,
        heredocs: Vec::new(),
        // The caller sets it (the top level moves the joined line in).
        original: String::new(),
        start_line: 0,
        end_line: 0,
        prev_comment,
    })
}

/// RUN, COPY and ADD in shell form (also inside ONBUILD) can carry heredocs.
fn can_contain_heredoc(node: &Node) -> bool {
    let target = match &node.args {
        Args::Nested(inner) if node.keyword == "onbuild" => inner,
        _ => node,
    };
    matches!(target.keyword.as_str(), "add" | "copy" | "run") && !target.json_form
}
