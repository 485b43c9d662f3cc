//! Shell-word processing for Dockerfile arguments: quotes, escapes, `$V` / `${V...}` expansion
//! and splitting into words, with the semantics of BuildKit's `shell.Lex`.
//!
//! A [`Lexer`] is configured with the escape character in force (`\` or `` ` ``) and a few
//! switches; [`Lexer::process_word`] expands one word and reports which variables it used
//! (found and not found), [`Lexer::process_words`] also splits the result into words the way
//! `ENV`/`ARG`/`EXPOSE` arguments are split (unquoted expansions split on white space, quoted
//! text never does).

pub(crate) mod go_unicode;
mod pattern;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use go_unicode::go_quote;

/// Where variable values come from during expansion.
pub trait Env {
    /// The value of `name`, or `None` when it is not set (set but empty is `Some("")`).
    fn lookup(&self, name: &str) -> Option<String>;
}

/// An environment with nothing set.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn lookup(&self, _name: &str) -> Option<String> {
        None
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn lookup(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Env for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// An ordered list of `(name, value)` pairs; a later entry of the same name wins.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<String> {
        Env::lookup(self.as_slice(), name)
    }
}

/// What went wrong while processing a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LexErrorKind {
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    #[error("unexpected end of statement while looking for matching {stop}")]
    UnterminatedUntil { stop: char },
    #[error("syntax error: missing '}}'")]
    MissingClosingBrace,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    #[error("unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier { modifier: String },
    /// `${V?message}` / `${V:?message}` with `V` unset (or empty).
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    /// `${` nested deeper than [`MAX_SUBSTITUTION_DEPTH`] (BuildKit has no limit; kiln keeps
    /// one so that no input can exhaust the stack).
    #[error("substitutions nested more than {limit} deep")]
    NestedTooDeep { limit: usize },
}

/// How deep `$`-substitutions may nest (`${A:-${B:-...}}`).
pub const MAX_SUBSTITUTION_DEPTH: usize = 64;

/// A word that could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {}: {kind}", go_quote(word))]
#[non_exhaustive]
pub struct LexError {
    /// The word as given.
    pub word: String,
    pub kind: LexErrorKind,
}

/// The outcome of processing one word.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessedWord {
    /// The expanded word (spaces between words kept).
    pub result: String,
    /// The expanded word split into words.
    pub words: Vec<String>,
    /// Variables referenced and found in the environment.
    pub matched: BTreeSet<String>,
    /// Variables referenced but not set.
    pub unmatched: BTreeSet<String>,
}

/// Word processor configuration (BuildKit's `shell.Lex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    /// The escape character: `\` or `` ` ``.
    pub escape: char,
    /// Keep quote characters in the result.
    pub raw_quotes: bool,
    /// Keep escape characters in the result.
    pub raw_escapes: bool,
    /// Treat `'` and `"` as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written (`$X`, `${X:-y}`) instead of expanding
    /// them to empty.
    pub skip_unset_env: bool,
}

impl Lexer {
    /// A lexer with the given escape character and every switch off.
    pub fn new(escape: char) -> Lexer {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` against `env`; also returns the words it splits into and the variables
    /// it referenced.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<ProcessedWord, LexError> {
        self.process(word, env, true)
    }

    /// [`Lexer::process_word`]'s `result` alone: the same expansion, without splitting it into
    /// words (for the callers that only want the text).
    pub fn expand_word(&self, word: &str, env: &dyn Env) -> Result<String, LexError> {
        self.process(word, env, false)
            .map(|processed| processed.result)
    }

    fn process(
        &self,
        word: &str,
        env: &dyn Env,
        collect_words: bool,
    ) -> Result<ProcessedWord, LexError> {
        let mut state = ShellWord::new(self, word, env);
        state.collect_words = collect_words;
        match state.process_until(None, self.raw_escapes) {
            Ok((result, words)) => Ok(ProcessedWord {
                result,
                words,
                matched: state.matched,
                unmatched: state.unmatched,
            }),
            Err(kind) => Err(LexError {
                word: word.to_string(),
                kind,
            }),
        }
    }

    /// Expands `word` against `env` and splits it into words.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, LexError> {
        self.process_word(word, env)
            .map(|processed| processed.words)
    }
}

/// A cursor over the characters of a word (Go's `text/scanner` Peek/Next), reading the word in
/// place.
struct Scanner<'w> {
    /// What is left to read.
    rest: &'w str,
}

impl<'w> Scanner<'w> {
    fn new(text: &'w str) -> Scanner<'w> {
        Scanner {
            rest: text.strip_prefix('\u{feff}').unwrap_or(text),
        }
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let mut characters = self.rest.chars();
        let character = characters.next();
        self.rest = characters.as_str();
        character
    }
}

/// The words being collected. The text of the current word lives in `ShellWord::words_buffer`,
/// which BuildKit shares between nested calls (and clears at the start of each).
struct Words {
    words: Vec<String>,
    in_word: bool,
    /// Off when only the expanded text is wanted: then nothing is collected.
    enabled: bool,
}

impl Words {
    fn new(enabled: bool) -> Words {
        Words {
            words: Vec::new(),
            in_word: false,
            enabled,
        }
    }

    fn add_char(&mut self, buffer: &mut String, character: char) {
        if !self.enabled {
            return;
        }
        if go_unicode::is_space(character) && self.in_word {
            if !buffer.is_empty() {
                self.words.push(std::mem::take(buffer));
                self.in_word = false;
            }
        } else if !go_unicode::is_space(character) {
            self.add_raw_char(buffer, character);
        }
    }

    fn add_raw_char(&mut self, buffer: &mut String, character: char) {
        if !self.enabled {
            return;
        }
        buffer.push(character);
        self.in_word = true;
    }

    fn add_string(&mut self, buffer: &mut String, text: &str) {
        if !self.enabled {
            return;
        }
        for character in text.chars() {
            self.add_char(buffer, character);
        }
    }

    fn add_raw_string(&mut self, buffer: &mut String, text: &str) {
        if !self.enabled {
            return;
        }
        buffer.push_str(text);
        self.in_word = true;
    }

    fn finish(mut self, buffer: &mut String) -> Vec<String> {
        if !buffer.is_empty() {
            self.words.push(std::mem::take(buffer));
        }
        self.words
    }
}

/// The state of processing one word.
struct ShellWord<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Env,
    scanner: Scanner<'a>,
    raw_escapes: bool,
    /// Whether the result is also split into words, and the variables used are recorded.
    collect_words: bool,
    words_buffer: String,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

type Outcome<T> = Result<T, LexErrorKind>;

/// Go's `string(rune)` for a possibly-absent character (end of input is `U+FFFD`).
fn rune_text(character: Option<char>) -> char {
    character.unwrap_or('\u{fffd}')
}

/// POSIX special parameters (`$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!`, `$0`).
fn is_special_parameter(character: char) -> bool {
    matches!(character, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

impl<'a> ShellWord<'a> {
    fn new(lexer: &'a Lexer, word: &'a str, env: &'a dyn Env) -> ShellWord<'a> {
        ShellWord {
            lexer,
            env,
            scanner: Scanner::new(word),
            raw_escapes: lexer.raw_escapes,
            collect_words: true,
            words_buffer: String::new(),
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    /// Processes characters until `stop` (consumed) or the end of input when `stop` is `None`.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Outcome<(String, Vec<String>)> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let outcome = self.process_until_inner(stop);
        self.raw_escapes = saved;
        outcome
    }

    fn process_until_inner(&mut self, stop: Option<char>) -> Outcome<(String, Vec<String>)> {
        let mut result = String::new();
        self.words_buffer.clear();
        let mut words = Words::new(self.collect_words);
        while let Some(character) = self.scanner.peek() {
            if stop == Some(character) {
                self.scanner.next();
                return Ok((result, words.finish(&mut self.words_buffer)));
            }
            match character {
                '$' => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    words.add_string(&mut self.words_buffer, &value);
                }
                '<' => {
                    let value = self.process_possible_heredoc();
                    result.push_str(&value);
                    words.add_raw_string(&mut self.words_buffer, &value);
                }
                '\'' if !self.lexer.skip_process_quotes => {
                    let value = self.process_single_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&mut self.words_buffer, &value);
                }
                '"' if !self.lexer.skip_process_quotes => {
                    let value = self.process_double_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&mut self.words_buffer, &value);
                }
                _ => {
                    self.scanner.next();
                    let mut character = character;
                    if character == self.lexer.escape {
                        if self.raw_escapes {
                            words.add_raw_char(&mut self.words_buffer, character);
                            result.push(character);
                        }
                        // The escape character escapes the next one, except at the end.
                        match self.scanner.next() {
                            None => break,
                            Some(escaped) => character = escaped,
                        }
                        words.add_raw_char(&mut self.words_buffer, character);
                    } else {
                        words.add_char(&mut self.words_buffer, character);
                    }
                    result.push(character);
                }
            }
        }
        if let Some(stop) = stop {
            return Err(LexErrorKind::UnterminatedUntil { stop });
        }
        Ok((result, words.finish(&mut self.words_buffer)))
    }

    fn process_single_quote(&mut self) -> Outcome<String> {
        // Everything up to the next single quote is literal; a single quote cannot be escaped.
        let mut result = String::new();
        let opening = self.scanner.next();
        if self.lexer.raw_quotes {
            result.push(rune_text(opening));
        }
        loop {
            match self.scanner.next() {
                None => return Err(LexErrorKind::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(character) => result.push(character),
            }
        }
    }

    fn process_double_quote(&mut self) -> Outcome<String> {
        // Literal except `$` expansions; the escape character escapes `"`, `$` and itself.
        let mut result = String::new();
        let opening = self.scanner.next();
        if self.lexer.raw_quotes {
            result.push(rune_text(opening));
        }
        loop {
            match self.scanner.peek() {
                None => return Err(LexErrorKind::UnterminatedDoubleQuote),
                Some('"') => {
                    self.scanner.next();
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(mut character) => {
                    self.scanner.next();
                    if character == self.lexer.escape {
                        if self.raw_escapes {
                            result.push(character);
                        }
                        match self.scanner.peek() {
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                self.scanner.next();
                                character = next;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(character);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Outcome<String> {
        if self.depth >= MAX_SUBSTITUTION_DEPTH {
            return Err(LexErrorKind::NestedTooDeep {
                limit: MAX_SUBSTITUTION_DEPTH,
            });
        }
        self.depth += 1;
        let outcome = self.process_dollar_inner();
        self.depth -= 1;
        outcome
    }

    fn process_dollar_inner(&mut self) -> Outcome<String> {
        self.scanner.next();

        // `$name`
        if self.scanner.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }

        self.scanner.next();
        match self.scanner.peek() {
            None => return Err(LexErrorKind::MissingClosingBrace),
            Some('{' | '}' | ':') => return Err(LexErrorKind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let mut modifier = self.scanner.next();
        let mut modifier_text = rune_text(modifier).to_string();

        match modifier {
            Some('}') => Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                let mut null_is_unset = false;
                if modifier == Some(':') {
                    null_is_unset = true;
                    modifier = self.scanner.next();
                    modifier_text.push(rune_text(modifier));
                }
                let raw_escapes = matches!(modifier, Some('#' | '%'));
                if null_is_unset && raw_escapes {
                    return Err(LexErrorKind::UnsupportedModifier {
                        modifier: modifier_text,
                    });
                }
                let word = match self.process_until(Some('}'), raw_escapes) {
                    Ok((word, _)) => word,
                    Err(_) if self.scanner.peek().is_none() => {
                        return Err(LexErrorKind::MissingClosingBrace)
                    }
                    Err(error) => return Err(error),
                };

                let value = self.get_env(&name);
                if self.lexer.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{modifier_text}{word}}}"));
                }
                let set = value.is_some();
                let value = value.unwrap_or_default();
                let null_or_unset = !set || (null_is_unset && value.is_empty());
                match modifier {
                    Some('-') => Ok(if null_or_unset { word } else { value }),
                    Some('+') => Ok(if null_or_unset { String::new() } else { word }),
                    Some('?') => {
                        if null_or_unset {
                            let message = if !word.is_empty() {
                                word
                            } else if !set {
                                "is not allowed to be unset".to_string()
                            } else {
                                "is not allowed to be empty".to_string()
                            };
                            return Err(LexErrorKind::Required { name, message });
                        }
                        Ok(value)
                    }
                    Some(operator @ ('%' | '#')) => {
                        // `%`/`#` remove the shortest match, `%%`/`##` the longest.
                        let (pattern, greedy) = match word.strip_prefix(operator) {
                            Some(rest) => (rest.to_string(), true),
                            None => (word, false),
                        };
                        let trimmed = if operator == '%' {
                            pattern::trim_suffix(&pattern, &value, greedy)
                        } else {
                            pattern::trim_prefix(&pattern, &value, greedy)
                        };
                        trimmed.map_err(|(pattern, reason)| LexErrorKind::InvalidPattern {
                            pattern,
                            reason,
                        })
                    }
                    _ => Err(LexErrorKind::UnsupportedModifier {
                        modifier: modifier_text,
                    }),
                }
            }
            Some('/') => {
                let replace_all = self.scanner.peek() == Some('/');
                if replace_all {
                    self.scanner.next();
                }
                let pattern = match self.process_until(Some('/'), true) {
                    Ok((pattern, _)) => pattern,
                    Err(_) if self.scanner.peek().is_none() => {
                        return Err(LexErrorKind::MissingSlash)
                    }
                    Err(error) => return Err(error),
                };
                let replacement = match self.process_until(Some('}'), true) {
                    Ok((replacement, _)) => replacement,
                    Err(_) if self.scanner.peek().is_none() => {
                        return Err(LexErrorKind::MissingClosingBrace)
                    }
                    Err(error) => return Err(error),
                };
                let Some(value) = self.get_env(&name) else {
                    if self.lexer.skip_unset_env {
                        return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                    }
                    return self.replace(&pattern, "", &replacement, replace_all);
                };
                self.replace(&pattern, &value, &replacement, replace_all)
            }
            _ => Err(LexErrorKind::UnsupportedModifier {
                modifier: modifier_text,
            }),
        }
    }

    fn replace(
        &self,
        pattern: &str,
        value: &str,
        replacement: &str,
        replace_all: bool,
    ) -> Outcome<String> {
        let expression =
            pattern::shell_pattern_to_regex(pattern, true, false).map_err(|reason| {
                LexErrorKind::InvalidPattern {
                    pattern: pattern.to_string(),
                    reason,
                }
            })?;
        Ok(if replace_all {
            pattern::replace_all(&expression, value, replacement)
        } else {
            pattern::replace_first(&expression, value, replacement)
        })
    }

    /// A variable name: letters, digits and `_`; a run of digits (`$12`); or one special
    /// parameter (`$@`).
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(character) = self.scanner.peek() {
            if name.is_empty() && go_unicode::is_digit(character) {
                while let Some(digit) = self.scanner.peek().filter(|&c| go_unicode::is_digit(c)) {
                    self.scanner.next();
                    name.push(digit);
                }
                return name;
            }
            if name.is_empty() && is_special_parameter(character) {
                self.scanner.next();
                return character.to_string();
            }
            if !go_unicode::is_letter(character)
                && !go_unicode::is_digit(character)
                && character != '_'
            {
                break;
            }
            self.scanner.next();
            name.push(character);
        }
        name
    }

    /// `<<` (plus the blanks after it) stays glued to the heredoc word that follows.
    fn process_possible_heredoc(&mut self) -> String {
        self.scanner.next();
        if self.scanner.peek() != Some('<') {
            return "<".to_string();
        }
        self.scanner.next();
        let mut result = "<<".to_string();
        while let Some(blank) = self
            .scanner
            .peek()
            .filter(|c| matches!(c, '\t' | '\r' | ' '))
        {
            result.push(blank);
            self.scanner.next();
        }
        result
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let value = self.env.lookup(name);
        if !self.collect_words {
            // `expand_word` reports neither list.
        } else if value.is_some() {
            self.matched.insert(name.to_string());
        } else {
            self.unmatched.insert(name.to_string());
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![
            ("A".into(), "a/b/c".into()),
            ("EMPTY".into(), String::new()),
        ]
    }

    fn word(input: &str) -> String {
        Lexer::new('\\')
            .process_word(input, &env())
            .map(|p| p.result)
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn expands_modifiers() {
        assert_eq!(word("${A#*/}"), "b/c");
        assert_eq!(word("${A##*/}"), "c");
        assert_eq!(word("${A%/*}"), "a/b");
        assert_eq!(word("${A%%/*}"), "a");
        assert_eq!(word("${A/\\//_}"), "a_b/c");
        assert_eq!(word("${A//\\//_}"), "a_b_c");
        assert_eq!(word("${EMPTY:-x}${EMPTY-y}${UNSET-z}"), "xz");
        assert_eq!(word("${EMPTY:+x}${EMPTY+y}${UNSET+z}"), "y");
        assert_eq!(
            word("${UNSET:?must be set}"),
            "error: failed to process \"${UNSET:?must be set}\": UNSET: must be set"
        );
        assert_eq!(
            word("${EMPTY:?}"),
            "error: failed to process \"${EMPTY:?}\": EMPTY: is not allowed to be empty"
        );
        assert_eq!(
            word("${A:#x}"),
            "error: failed to process \"${A:#x}\": unsupported modifier (:#) in substitution"
        );
    }

    #[test]
    fn reports_used_variables() {
        let processed = Lexer::new('\\')
            .process_word("$A ${B:-$EMPTY}", &env())
            .unwrap();
        assert_eq!(
            processed.matched,
            ["A", "EMPTY"].iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(
            processed.unmatched,
            ["B"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn skip_unset_keeps_references() {
        let lexer = Lexer {
            skip_unset_env: true,
            ..Lexer::new('\\')
        };
        let result = lexer
            .process_word("$X ${Y} ${Z:-w} ${W//a/b} $A", &env())
            .unwrap()
            .result;
        assert_eq!(result, "$X ${Y} ${Z:-w} ${W/a/b} a/b/c");
    }

    #[test]
    fn backtick_escape() {
        let lexer = Lexer::new('`');
        assert_eq!(
            lexer.process_word("a`$A\\b", &env()).unwrap().result,
            "a$A\\b"
        );
    }

    #[test]
    fn closures_are_environments() {
        let lookup = |name: &str| (name == "X").then(|| "1".to_string());
        assert_eq!(
            Lexer::new('\\')
                .process_word("$X$Y", &lookup)
                .unwrap()
                .result,
            "1"
        );
    }
}
