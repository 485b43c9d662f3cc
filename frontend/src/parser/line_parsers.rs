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
pub(crate) fn split_command(line: &str, escape: char) -> (String, Vec<String>, String) {
    let trimmed = line.trim();
    let mut pieces = split_blank_runs(trimmed, Some(2)).into_iter();
    let command = pieces.next().unwrap_or_default();
    match pieces.next() {
        Some(rest) => {
            let (arguments, flags) = extract_builder_flags(&rest, escape);
            (command, flags, arguments.trim().to_string())
        }
        None => (command, Vec::new(), String::new()),
    }
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
fn extract_builder_flags(line: &str, escape: char) -> (String, Vec<String>) {
    let characters: Vec<(usize, char)> = line.char_indices().collect();
    let length = characters.len();
    let byte_at = |index: usize| characters.get(index).map_or(line.len(), |&(byte, _)| byte);
    let mut flags = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut index = 0;
    while index <= length {
        let at_end = index == length;
        let mut character = characters
            .get(index)
            .map_or('\0', |&(_, character)| character);
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_byte_space(character) {
                index += 1;
                continue;
            }
            let next_is_dash = characters
                .get(index + 1)
                .is_some_and(|&(_, next)| next == '-');
            if character != '-' || !next_is_dash {
                return (line[byte_at(index)..].to_string(), flags);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                flags.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_byte_space(character) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line[byte_at(index)..].to_string(), flags);
                }
                if blank_ok || !word.is_empty() {
                    flags.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                index += 1;
                continue;
            }
            if character == '\'' || character == '"' {
                quote = character;
                blank_ok = true;
                phase = Phase::Quote;
                index += 1;
                continue;
            }
            if character == escape {
                if index + 1 == length {
                    index += 1;
                    continue;
                }
                index += 1;
                character = characters[index].1;
            }
            word.push(character);
            index += 1;
            continue;
        }
        // In a quote.
        if character == quote {
            phase = Phase::Word;
            index += 1;
            continue;
        }
        if character == escape {
            if index + 1 == length {
                phase = Phase::Word;
                index += 1;
                continue;
            }
            index += 1;
            character = characters[index].1;
        }
        word.push(character);
        index += 1;
    }
    (String::new(), flags)
}

/// Splits on white space, keeping quotes and escapes (they are processed later, at expansion).
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let characters: Vec<char> = rest.chars().collect();
    let length = characters.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut index = 0;
    while index <= length {
        let at_end = index == length;
        let mut character = characters.get(index).copied().unwrap_or('\0');
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(character) {
                index += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(character) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                index += 1;
                continue;
            }
            if character == '\'' || character == '"' {
                quote = character;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if character == escape {
                if index + 1 == length {
                    index += 1;
                    continue;
                }
                // An unquoted escape keeps itself and the next character, even a quote.
                word.push(character);
                index += 1;
                character = characters[index];
            }
            word.push(character);
            index += 1;
            continue;
        }
        // In a quote.
        if character == quote {
            phase = Phase::Word;
        }
        if character == escape && quote != '\'' {
            if index + 1 == length {
                phase = Phase::Word;
                index += 1;
                continue;
            }
            index += 1;
            word.push(character);
            character = characters[index];
        }
        word.push(character);
        index += 1;
    }
    words
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
        let split = |line: &str| split_command(line, '\\');
        assert_eq!(
            split("COPY --from=a --chown=\"x y\" s d"),
            (
                "COPY".into(),
                owned(&["--from=a", "--chown=x y"]),
                "s d".into()
            )
        );
        assert_eq!(
            split("COPY --a -- --b"),
            ("COPY".into(), owned(&["--a"]), "--b".into())
        );
        assert_eq!(split("RUN"), ("RUN".into(), vec![], String::new()));
        assert_eq!(split("  run \t x  "), ("run".into(), vec![], "x".into()));
        assert_eq!(
            split("RUN --x"),
            ("RUN".into(), owned(&["--x"]), String::new())
        );
    }

    #[test]
    fn splits_on_blank_runs_like_go() {
        assert_eq!(split_blank_runs("a  b\tc", None), owned(&["a", "b", "c"]));
        assert_eq!(split_blank_runs("a  b c", Some(2)), owned(&["a", "b c"]));
        assert_eq!(split_blank_runs(" a ", None), owned(&["", "a", ""]));
        assert_eq!(split_blank_runs("a\u{a0}b", None), owned(&["a\u{a0}b"]));
    }
}
