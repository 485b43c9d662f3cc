//! The syntax tree the parser produces: one `Node` per instruction, as BuildKit's `parser.Node`.
//!
//! This is the contract between `parser` (text -> nodes) and `instructions` (nodes -> typed
//! instructions). Line numbers are 1-based and inclusive.

/// A parsed Dockerfile: its directives and its instructions in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// Parser directives found at the top (`# syntax=`, `# escape=`, `# check=`), in order.
    pub directives: Vec<Directive>,
    /// The escape character in force (`\\` or `` ` ``).
    pub escape: char,
    /// One node per instruction.
    pub nodes: Vec<Node>,
    /// Warnings the parser noticed (empty continuation lines, ...), with their line.
    pub warnings: Vec<Warning>,
}

/// A parser directive such as `# escape=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// A non-fatal observation about the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The keyword, lower case (`from`, `run`, ...).
    pub keyword: String,
    /// The `--flags` given before the arguments, as written (`--mount=type=cache,target=/x`).
    pub flags: Vec<String>,
    /// The arguments (see `Args`).
    pub args: Args,
    /// Whether the arguments came from the JSON (exec) form.
    pub json_form: bool,
    /// Heredocs attached to this instruction, in order of appearance.
    pub heredocs: Vec<Heredoc>,
    /// The instruction's text as written, continuations joined (what BuildKit calls Original).
    pub original: String,
    /// First and last line of the instruction in the file (heredoc bodies included).
    pub start_line: usize,
    pub end_line: usize,
    /// Comment lines directly above the instruction, without the `#`.
    pub prev_comment: Vec<String>,
}

/// An instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Plain arguments: for the shell form one string (the rest of the line), for the JSON form
    /// the array items, for whitespace-separated instructions (FROM, EXPOSE, ...) the words.
    Words(Vec<String>),
    /// ENV and LABEL: each pair as (key, raw value, separator) where the separator is `""` for
    /// the old `ENV name value` form and `"="` for `name=value`.
    Pairs(Vec<KeyValue>),
    /// ONBUILD: the instruction it wraps.
    Nested(Box<Node>),
}

/// One `key=value` pair of ENV or LABEL, value unexpanded (quotes and escapes kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub separator: String,
}

/// A heredoc body attached to an instruction (`<<EOF ... EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word (`EOF`), without quotes.
    pub name: String,
    /// The body, every line ending in `\n` (tabs already stripped for `<<-`).
    pub content: String,
    /// Whether variables in the body are expanded (false when the delimiter was quoted).
    pub expand: bool,
    /// Whether leading tabs were stripped (`<<-`).
    pub chomp: bool,
    /// The file descriptor number when written as `3<<EOF`, if any.
    pub file_descriptor: Option<u32>,
}
