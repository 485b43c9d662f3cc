//! Per-instruction argument parsing (BuildKit's `line_parsers.go` and `split_command.go`):
//! splitting a joined line into keyword, `--flags` and arguments, then reading the arguments the
//! way each instruction wants them.

use super::json::{parse_string_array, JsonArray};
use crate::ast::{Args, KeyValue};
use crate::shell::go_unicode::is_space;

/// Arguments as parsed, and whether they came from the JSON form.
pub(crate) struct ParsedArgs {
    pub args: Args,
    pub json_form: bool,
}

impl ParsedArgs {
    fn words(words: Vec<String>) -> ParsedArgs {
        ParsedArgs {
            args: Args::Words(words),
            json_form: false,
        }
    }

    fn none() -> ParsedArgs {
        ParsedArgs::words(Vec::new())
    }
}

/// Go's `unicode.IsSpace(rune(byte))` as BuildKit applies it to the bytes of a line: only the
/// ASCII white space (the first byte of a multi-byte character is never a space).
fn is_byte_space(character: char) -> bool {
    matches!(character, '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// The blanks of BuildKit's `[\t\v\f\r ]+` separator.
fn is_blank(character: char) -> bool {
    matches!(character, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Go's `regexp.MustCompile("[\t\v\f\r ]+").Split(text, limit)`: pieces between runs of blanks
/// (empty pieces at the ends when the text starts or ends with blanks), at most `limit` pieces.
pub(crate) fn split_blank_runs(text: &str, limit: Option<usize>) -> Vec<String> {
    if text.is_empty() {
        return vec![String::new()];
    }
    let mut pieces = Vec::new();
    let mut piece_start = 0;
    let mut characters = text.char_indices().peekable();
    while let Some((index, character)) = characters.next() {
        if !is_blank(character) {
            continue;
        }
        if limit.is_some_and(|limit| pieces.len() + 1 >= limit) {
            break;
        }
        let mut run_end = index + character.len_utf8();
        while let Some(&(next_index, next)) = characters.peek() {
            if !is_blank(next) {
                break;
            }
            run_end = next_index + next.len_utf8();
            characters.next();
        }
        pieces.push(text[piece_start..index].to_string());
        piece_start = run_end;
    }
    pieces.push(text[piece_start..].to_string());
    pieces
}

/// Splits a joined instruction line into its keyword (as written), its `--flags` and the rest.
pub(crate) fn split_command(line: &str, escape: char) -> (&str, Vec<String>, &str) {
    let trimmed = line.trim();
    // Go's `Split(trimmed, 2)` on runs of blanks: the keyword, then all after the first run.
    let Some(blank) = trimmed.find(is_blank) else {
        return (trimmed, Vec::new(), "");
    };
    let command = &trimmed[..blank];
    let rest = trimmed[blank..].trim_start_matches(is_blank);
    let (arguments, flags) = extract_builder_flags(rest, escape);
    (command, flags, arguments.trim())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Spaces,
    Word,
    Quote,
}

/// Reads leading `--flag` words (quotes removed, escapes applied); a bare `--` ends them.
/// Returns the rest of the line and the flags.
///
/// BuildKit reads this part byte by byte (so it mangles non-ASCII text in flags); kiln reads
/// characters, which gives the same result for ASCII and keeps other text intact.
fn extract_builder_flags(line: &str, escape: char) -> (&str, Vec<String>) {
    let mut flags = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut characters = line.char_indices().peekable();
    loop {
        let Some((byte, mut character)) = characters.next() else {
            // The end of the line ends the flag being read.
            if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
                flags.push(word);
            }
            return ("", flags);
        };
        if phase == Phase::Spaces {
            if is_byte_space(character) {
                continue;
            }
            let next_is_dash = characters.peek().is_some_and(|&(_, next)| next == '-');
            if character != '-' || !next_is_dash {
                return (&line[byte..], flags);
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if is_byte_space(character) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (&line[byte..], flags);
                }
                if blank_ok || !word.is_empty() {
                    flags.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                continue;
            }
            if character == '\'' || character == '"' {
                quote = character;
                blank_ok = true;
                phase = Phase::Quote;
                continue;
            }
            if character == escape {
                // An escape at the very end is dropped.
                let Some((_, next)) = characters.next() else {
                    continue;
                };
                character = next;
            }
            word.push(character);
            continue;
        }
        // In a quote.
        if character == quote {
            phase = Phase::Word;
            continue;
        }
        if character == escape {
            let Some((_, next)) = characters.next() else {
                phase = Phase::Word;
                continue;
            };
            character = next;
        }
        word.push(character);
    }
}

/// Splits on white space, keeping quotes and escapes (they are processed later, at expansion).
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut characters = rest.chars();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    loop {
        let Some(mut character) = characters.next() else {
            if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            return words;
        };
        if phase == Phase::Spaces {
            if is_space(character) {
                continue;
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if is_space(character) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                continue;
            }
            if character == '\'' || character == '"' {
                quote = character;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if character == escape {
                // An unquoted escape keeps itself and the next character, even a quote; at
                // the very end it is dropped.
                let Some(next) = characters.next() else {
                    continue;
                };
                word.push(character);
                character = next;
            }
            word.push(character);
            continue;
        }
        // In a quote.
        if character == quote {
            phase = Phase::Word;
        }
        if character == escape && quote != '\'' {
            let Some(next) = characters.next() else {
                phase = Phase::Word;
                continue;
            };
            word.push(character);
            character = next;
        }
        word.push(character);
    }
}

/// ENV and LABEL: `name value` (old form, one pair) or `name=value ...`.
pub(crate) fn parse_name_value(
    rest: &str,
    instruction: &str,
    escape: char,
) -> Result<ParsedArgs, String> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(ParsedArgs {
            args: Args::Pairs(Vec::new()),
            json_form: false,
        });
    }
    if !words[0].contains('=') {
        let parts = split_blank_runs(rest, Some(2));
        let [key, value] = parts.as_slice() else {
            return Err(format!("{instruction} must have two arguments"));
        };
        let pair = KeyValue {
            key: key.clone(),
            value: value.clone(),
            separator: String::new(),
        };
        return Ok(ParsedArgs {
            args: Args::Pairs(vec![pair]),
            json_form: false,
        });
    }
    let mut pairs = Vec::with_capacity(words.len());
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "syntax error - can't find = in {}: must be of the form name=value",
                crate::shell::go_quote(&word)
            ));
        };
        pairs.push(KeyValue {
            key: key.to_string(),
            value: value.to_string(),
            separator: "=".to_string(),
        });
    }
    Ok(ParsedArgs {
        args: Args::Pairs(pairs),
        json_form: false,
    })
}

/// ARG: `name`, `name=value`, several of them, quotes kept.
pub(crate) fn parse_name_or_name_value(rest: &str, escape: char) -> ParsedArgs {
    ParsedArgs::words(parse_words(rest, escape))
}

/// FROM, EXPOSE: words separated by blanks.
pub(crate) fn parse_strings_whitespace_delimited(rest: &str) -> ParsedArgs {
    if rest.is_empty() {
        return ParsedArgs::none();
    }
    ParsedArgs::words(split_blank_runs(rest, None))
}

/// MAINTAINER, USER, WORKDIR, STOPSIGNAL: the rest of the line as one argument.
pub(crate) fn parse_string(rest: &str) -> ParsedArgs {
    if rest.is_empty() {
        return ParsedArgs::none();
    }
    ParsedArgs::words(vec![rest.to_string()])
}

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// The JSON form, if `rest` is a JSON array (`None` when it is not valid JSON).
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, String> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match parse_string_array(rest) {
        JsonArray::Strings(items) => Ok(Some(items)),
        JsonArray::NotStrings => Err(NOT_STRING_ARRAY.to_string()),
        JsonArray::Invalid => Ok(None),
    }
}

/// RUN, CMD, ENTRYPOINT, SHELL: the JSON form, or else the rest of the line as one argument.
pub(crate) fn parse_maybe_json(rest: &str) -> Result<ParsedArgs, String> {
    if rest.is_empty() {
        return Ok(ParsedArgs::none());
    }
    Ok(match parse_json(rest)? {
        Some(items) => ParsedArgs {
            args: Args::Words(items),
            json_form: true,
        },
        None => ParsedArgs::words(vec![rest.to_string()]),
    })
}

/// ADD, COPY, VOLUME: the JSON form, or else words separated by blanks.
pub(crate) fn parse_maybe_json_to_list(rest: &str) -> Result<ParsedArgs, String> {
    Ok(match parse_json(rest)? {
        Some(items) => ParsedArgs {
            args: Args::Words(items),
            json_form: true,
        },
        None => parse_strings_whitespace_delimited(rest),
    })
}

/// HEALTHCHECK: a type word (`NONE`, `CMD`), then for CMD the command as in `parse_maybe_json`.
pub(crate) fn parse_health_config(rest: &str) -> Result<ParsedArgs, String> {
    let separator = rest
        .char_indices()
        .find(|&(_, character)| is_byte_space(character))
        .map_or(rest.len(), |(index, _)| index);
    if separator == 0 {
        return Ok(ParsedArgs::none());
    }
    let after = &rest[separator..];
    let command_start = after
        .char_indices()
        .find(|&(_, character)| !is_byte_space(character))
        .map_or(after.len(), |(index, _)| index);
    let command = parse_maybe_json(&after[command_start..])?;
    let mut words = vec![rest[..separator].to_string()];
    if let Args::Words(items) = command.args {
        words.extend(items);
    }
    Ok(ParsedArgs {
        args: Args::Words(words),
        json_form: command.json_form,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn words_keep_quotes() {
        assert_eq!(parse_words("foo", '\\'), owned(&["foo"]));
        assert_eq!(parse_words("foo bar", '\\'), owned(&["foo", "bar"]));
        assert_eq!(parse_words("foo\\ bar", '\\'), owned(&["foo\\ bar"]));
        assert_eq!(
            parse_words("foo bar 'abc xyz'", '\\'),
            owned(&["foo", "bar", "'abc xyz'"])
        );
        assert_eq!(
            parse_words("föo bàr \"âbc xÿz\"", '\\'),
            owned(&["föo", "bàr", "\"âbc xÿz\""])
        );
        assert_eq!(parse_words("a= b=\"\"", '\\'), owned(&["a=", "b=\"\""]));
    }

    #[test]
    fn flags_are_extracted() {
        fn split(line: &str) -> (&str, Vec<String>, &str) {
            split_command(line, '\\')
        }
        assert_eq!(
            split("COPY --from=a --chown=\"x y\" s d"),
            ("COPY", owned(&["--from=a", "--chown=x y"]), "s d")
        );
        assert_eq!(split("COPY --a -- --b"), ("COPY", owned(&["--a"]), "--b"));
        assert_eq!(split("RUN"), ("RUN", vec![], ""));
        assert_eq!(split("  run \t x  "), ("run", vec![], "x"));
        assert_eq!(split("RUN --x"), ("RUN", owned(&["--x"]), ""));
        assert_eq!(
            split("RUN --x=\"a b\" \t--y c"),
            ("RUN", owned(&["--x=a b", "--y"]), "c")
        );
        assert_eq!(split("RUN -x"), ("RUN", vec![], "-x"));
        assert_eq!(split("RUN --a\\"), ("RUN", owned(&["--a"]), ""));
        assert_eq!(split("RUN --a='x\\"), ("RUN", owned(&["--a=x"]), ""));
        assert_eq!(split("RUN --a=''"), ("RUN", owned(&["--a="]), ""));
        assert_eq!(split("RUN -- x"), ("RUN", vec![], "x"));
        assert_eq!(split("RUN --"), ("RUN", vec![], ""));
    }

    #[test]
    fn splits_on_blank_runs_like_go() {
        assert_eq!(split_blank_runs("a  b\tc", None), owned(&["a", "b", "c"]));
        assert_eq!(split_blank_runs("a  b c", Some(2)), owned(&["a", "b c"]));
        assert_eq!(split_blank_runs(" a ", None), owned(&["", "a", ""]));
        assert_eq!(split_blank_runs("a\u{a0}b", None), owned(&["a\u{a0}b"]));
    }
}
