//! BuildKit's AST dump format: one `(keyword ["--flags"] "arg" ...)` line per instruction, every
//! string quoted as Go's `strconv.Quote` does. Used to compare kiln's parser with BuildKit's
//! test corpus and for debugging.

use super::is_known_instruction;
use crate::ast::{Args, Dockerfile, Node};
use crate::shell::go_unicode::{go_quote, go_quote_list};

/// The dump of a whole file: one line per instruction, each ending in `\n` (the text of
/// BuildKit's `testfiles/*/result`).
pub fn dump(dockerfile: &Dockerfile) -> String {
    let mut text = String::new();
    for node in &dockerfile.nodes {
        text.push('(');
        text.push_str(&dump_node(node));
        text.push_str(")\n");
    }
    text
}

/// The dump of one instruction, without the surrounding parentheses.
pub fn dump_node(node: &Node) -> String {
    let mut text = node.keyword.to_lowercase();
    if !node.flags.is_empty() {
        text.push(' ');
        text.push_str(&go_quote_list(&node.flags));
    }
    match &node.args {
        // BuildKit keeps one empty argument for an instruction it does not know.
        Args::Words(words) if words.is_empty() && !is_known_instruction(&node.keyword) => {
            text.push_str(" \"\"")
        }
        Args::Words(words) => {
            for word in words {
                text.push(' ');
                text.push_str(&go_quote(word));
            }
        }
        Args::Pairs(pairs) => {
            for pair in pairs {
                for part in [&pair.key, &pair.value, &pair.separator] {
                    text.push(' ');
                    text.push_str(&go_quote(part));
                }
            }
        }
        Args::Nested(inner) => {
            text.push_str(" (");
            text.push_str(&dump_node(inner));
            text.push(')');
        }
    }
    text.trim().to_string()
}
