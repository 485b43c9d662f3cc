//! Shell glob patterns of `${V#p}`, `${V%p}` and `${V/p/r}`, turned into regular expressions the
//! way BuildKit does (`*` any string, `?` one character, `\` escapes; no bracket expressions), and
//! Go's `ReplaceAllString` semantics for `${V//p/r}`.

use regex::Regex;

/// Turns a shell pattern into a regular expression; `greedy` picks `.*` over `.*?` for `*`,
/// `anchored` matches only at the start.
pub(crate) fn shell_pattern_to_regex(
    pattern: &str,
    greedy: bool,
    anchored: bool,
) -> Result<Regex, String> {
    let mut characters = pattern.chars().peekable();
    // Go's text/scanner skips a byte-order mark at the very start.
    if characters.peek() == Some(&'\u{feff}') {
        characters.next();
    }
    let mut expression = String::with_capacity(pattern.len() + 4);
    if anchored {
        expression.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut previous_was_star = false;
    while let Some(token) = characters.next() {
        if token != '*' {
            previous_was_star = false;
        }
        match token {
            '*' => {
                // Adjacent stars match what one star matches, in the same order of preference;
                // one is much cheaper to run.
                if !previous_was_star {
                    expression.push_str(star);
                }
                previous_was_star = true;
                continue;
            }
            '?' => {
                expression.push('.');
                continue;
            }
            '\\' => {
                // `}` and `/` had to be escaped inside `${}`; the escape is not part of the pattern.
                if matches!(characters.peek(), Some('}') | Some('/')) {
                    continue;
                }
                expression.push('\\');
                let escaped = characters.next();
                match escaped {
                    Some(escaped @ ('*' | '?' | '\\')) => expression.push(escaped),
                    other => {
                        return Err(format!(
                            "invalid escape '\\{}'",
                            other.unwrap_or('\u{fffd}')
                        ));
                    }
                }
                continue;
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                expression.push('\\')
            }
            _ => {}
        }
        expression.push(token);
    }
    Regex::new(&expression).map_err(|error| error.to_string())
}

/// A pattern that could not be used: the pattern as tried (reversed for `%`, as BuildKit
/// reports it) and why.
pub(crate) type PatternError = (String, String);

/// `${V#p}` / `${V##p}`: removes the shortest (longest when greedy) matching prefix.
pub(crate) fn trim_prefix(
    pattern: &str,
    value: &str,
    greedy: bool,
) -> Result<String, PatternError> {
    let expression = shell_pattern_to_regex(pattern, greedy, true)
        .map_err(|reason| (pattern.to_string(), reason))?;
    Ok(match expression.find(value) {
        Some(found) => value[found.end()..].to_string(),
        None => value.to_string(),
    })
}

/// `${V%p}` / `${V%%p}`: removes the shortest (longest when greedy) matching suffix, by
/// reversing both the pattern and the value and trimming a prefix.
pub(crate) fn trim_suffix(
    pattern: &str,
    value: &str,
    greedy: bool,
) -> Result<String, PatternError> {
    let reversed_pattern = reverse_pattern(pattern);
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reversed_pattern, &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern but keeps each escape before the character it escapes (`a\*c` -> `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let characters: Vec<char> = pattern.chars().collect();
    let mut reversed = vec!['\0'; characters.len()];
    let Some(last) = characters.len().checked_sub(1) else {
        return String::new();
    };
    let mut index = 0;
    while index <= last {
        let token = characters[index];
        let out_index = last - index;
        if token == '\\' && index != last {
            reversed[out_index - 1] = token;
            reversed[out_index] = characters[index + 1];
            index += 2;
        } else {
            reversed[out_index] = token;
            index += 1;
        }
    }
    reversed.into_iter().collect()
}

/// `${V/p/r}`: replaces the first match, the replacement taken literally.
pub(crate) fn replace_first(expression: &Regex, value: &str, replacement: &str) -> String {
    match expression.find(value) {
        Some(found) => format!(
            "{}{}{}",
            &value[..found.start()],
            replacement,
            &value[found.end()..]
        ),
        None => value.to_string(),
    }
}

/// `${V//p/r}`: Go's `Regexp.ReplaceAllString`, including its handling of empty matches and its
/// `$0` / `${name}` template expansion in the replacement.
pub(crate) fn replace_all(expression: &Regex, value: &str, template: &str) -> String {
    let mut output = String::with_capacity(value.len());
    let mut last_match_end = 0;
    let mut search_position = 0;
    while search_position <= value.len() {
        let Some(found) = expression.find_at(value, search_position) else {
            break;
        };
        output.push_str(&value[last_match_end..found.start()]);
        if found.end() > last_match_end || found.start() == 0 {
            expand_template(&mut output, template, found.as_str());
        }
        last_match_end = found.end();
        let width = value[search_position..]
            .chars()
            .next()
            .map_or(0, char::len_utf8);
        if search_position + width > found.end() {
            search_position += width;
        } else if search_position + 1 > found.end() {
            search_position += 1;
        } else {
            search_position = found.end();
        }
    }
    output.push_str(&value[last_match_end..]);
    output
}

/// Go's `Regexp.Expand` for a regular expression with no groups: `$$` is `$`, `$0`/`${0}` the
/// match, any other reference empty, a malformed one literal.
fn expand_template(output: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        output.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            output.push('$');
            rest = after;
            continue;
        }
        match extract_reference(rest) {
            None => output.push('$'),
            Some((number, after)) => {
                rest = after;
                if number == Some(0) {
                    output.push_str(matched);
                }
            }
        }
    }
    output.push_str(rest);
}

/// Go's `extract`: a `name` or `{name}` after `$`; returns the group number (when numeric) and
/// the text after the reference.
fn extract_reference(text: &str) -> Option<(Option<u64>, &str)> {
    let (braced, body) = match text.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, text),
    };
    let name_length: usize = body
        .chars()
        .take_while(|&character| {
            super::go_unicode::is_letter(character)
                || super::go_unicode::is_digit(character)
                || character == '_'
        })
        .map(char::len_utf8)
        .sum();
    if name_length == 0 {
        return None;
    }
    let name = &body[..name_length];
    let mut after = &body[name_length..];
    if braced {
        after = after.strip_prefix('}')?;
    }
    let mut number: Option<u64> = Some(0);
    for byte in name.bytes() {
        match number {
            Some(value) if byte.is_ascii_digit() && value < 100_000_000 => {
                number = Some(value * 10 + u64::from(byte - b'0'));
            }
            _ => {
                number = None;
                break;
            }
        }
    }
    if name.starts_with('0') && name.len() > 1 {
        number = None;
    }
    Some((number, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_like_bash() {
        assert_eq!(trim_prefix("*/", "a/b/c", false).unwrap(), "b/c");
        assert_eq!(trim_prefix("*/", "a/b/c", true).unwrap(), "c");
        assert_eq!(trim_suffix("/*", "a/b/c", false).unwrap(), "a/b");
        assert_eq!(trim_suffix("/*", "a/b/c", true).unwrap(), "a");
        assert_eq!(trim_suffix("\\*c", "ab*c", false).unwrap(), "ab");
        assert!(trim_prefix("\\x", "a", false).is_err());
    }

    #[test]
    fn replaces_like_go() {
        let expression = shell_pattern_to_regex("a*", true, false).unwrap();
        assert_eq!(replace_all(&expression, "baaac", "X"), "bX");
        let expression = shell_pattern_to_regex("", true, false).unwrap();
        assert_eq!(replace_all(&expression, "abc", "X"), "XaXbXcX");
        let expression = shell_pattern_to_regex("o", true, false).unwrap();
        assert_eq!(replace_all(&expression, "foo", "<$0>"), "f<o><o>");
        assert_eq!(
            replace_all(&expression, "foo", "$1|${0}|$$|$"),
            "f|o|$|$|o|$|$"
        );
        assert_eq!(replace_first(&expression, "foo", "$0"), "f$0o");
    }
}
