//! `.dockerignore` files and Docker's path patterns, with the semantics of moby/patternmatcher.
//!
//! Docker's rules are not gitignore's: a pattern is anchored at the context root (`foo` matches
//! `foo` and everything under it, never `a/foo`), `**` matches any number of directories, `!`
//! re-includes (even files under an excluded directory) and the last matching pattern wins.
//! A pattern matches a path when it matches the path itself or any of its parent directories.
//!
//! [`PatternMatcher`] is the general matcher (also used for `COPY --exclude` and the
//! include/exclude filters of a context source); [`DockerIgnore`] reads a `.dockerignore` file
//! into one.
//!
//! Two deliberate differences from moby/patternmatcher, which translates patterns into Go regular
//! expressions: the inside of a `[...]` class and a bare `^` keep their `filepath.Match` meaning
//! (moby passes them to the regexp engine, where `*` inside a class or a bare `^` change meaning),
//! and a reversed range such as `[z-a]` is rejected when the pattern is read instead of failing
//! on the first match.

use std::fmt;

/// A pattern that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A pattern that is only `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    LoneExclamation,
    /// A pattern whose syntax is wrong (unclosed `[`, empty class, trailing `\`, ...).
    #[error("bad pattern {pattern:?}: {reason}")]
    Syntax {
        pattern: String,
        reason: &'static str,
    },
}

/// A `.dockerignore` file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A pattern on a line of the file is wrong.
    #[error(".dockerignore line {line}")]
    Pattern {
        line: usize,
        #[source]
        source: PatternError,
    },
}

/// One compiled pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The cleaned pattern, without its leading `!`.
    text: String,
    exclusion: bool,
    kind: PatternKind,
}

/// How a pattern is matched; the split mirrors patternmatcher's match types, whose results differ
/// in corner cases (`**foo` matches any path ending in `foo`, as a plain suffix).
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternKind {
    /// Only literal characters: the path must be equal.
    Exact(String),
    /// Literals then a trailing `**`: the path must start with the literals.
    Prefix(String),
    /// A leading `**` then literals: the path must end with them (or, for `**/x`, be `x`).
    Suffix(String),
    /// Anything else.
    Glob(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    AnyChar,
    /// `*`: any run of characters other than `/`.
    Star,
    /// A trailing `**`: anything at all.
    AnyRest,
    /// `**` (with the `/` after it eaten) not at the end: nothing, or anything ending in `/`.
    AnyDirs,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Pattern {
    /// Compiles one pattern as given to [`PatternMatcher::new`] (trimmed, cleaned, `!` read).
    pub fn new(raw: &str) -> Result<Pattern, PatternError> {
        let cleaned = clean_path(raw.trim());
        let (exclusion, text) = match cleaned.strip_prefix('!') {
            Some("") => return Err(PatternError::LoneExclamation),
            Some(rest) => (true, rest.to_string()),
            None => (false, cleaned),
        };
        let kind = compile(&text)?;
        Ok(Pattern {
            text,
            exclusion,
            kind,
        })
    }

    /// The cleaned pattern, without its leading `!`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether this is a `!` pattern (re-includes what it matches).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether the pattern matches exactly this path (not counting parents).
    pub fn matches_exactly(&self, path: &str) -> bool {
        match &self.kind {
            PatternKind::Exact(literal) => path == literal,
            PatternKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PatternKind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            PatternKind::Glob(tokens) => {
                // The literals a glob starts and ends with can only match the path's first and
                // last characters: most paths fail there, before any state is stepped.
                if !leading_literals_match(tokens.iter(), path.chars())
                    || !leading_literals_match(tokens.iter().rev(), path.chars().rev())
                {
                    return false;
                }
                let mut states = StateSet::start(tokens);
                for character in path.chars() {
                    states.step(tokens, character);
                    if states.is_empty() {
                        return false;
                    }
                }
                states.accepts(tokens)
            }
        }
    }

    /// Whether the pattern matches the path or one of its parent directories
    /// (patternmatcher's `MatchesOrParentMatches` for one pattern).
    pub fn matches_or_parent(&self, path: &str) -> bool {
        if let PatternKind::Glob(tokens) = &self.kind {
            // One pass: a parent matches when the pattern accepts just before one of its `/`.
            let mut states = StateSet::start(tokens);
            for (index, character) in path.char_indices() {
                if character == '/' && index > 0 && states.accepts(tokens) {
                    return true;
                }
                states.step(tokens, character);
                if states.is_empty() {
                    return false;
                }
            }
            return states.accepts(tokens);
        }
        if self.matches_exactly(path) {
            return true;
        }
        path.char_indices()
            .filter(|&(_, character)| character == '/')
            .any(|(index, _)| index > 0 && self.matches_exactly(&path[..index]))
    }

    /// Whether the pattern could match some path strictly inside directory `dir` (a path
    /// starting with `dir/`). Exact for literal patterns; for globs it answers whether the
    /// pattern can consume `dir/` and still be unfinished, which never says no wrongly.
    pub fn could_match_inside(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        match &self.kind {
            PatternKind::Exact(literal) => {
                literal.len() > dir_slash.len() && literal.starts_with(&dir_slash)
            }
            PatternKind::Prefix(prefix) => {
                dir_slash.starts_with(prefix.as_str()) || prefix.starts_with(&dir_slash)
            }
            // Any name can be appended under the directory to end with the suffix.
            PatternKind::Suffix(_) => true,
            PatternKind::Glob(tokens) => {
                let mut states = StateSet::start(tokens);
                for character in dir_slash.chars() {
                    states.step(tokens, character);
                    if states.is_empty() {
                        return false;
                    }
                }
                states.can_continue(tokens)
            }
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pattern({}{:?})",
            if self.exclusion { "!" } else { "" },
            self.text
        )
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exclusion {
            f.write_str("!")?;
        }
        f.write_str(&self.text)
    }
}

/// Compiles a cleaned pattern (without `!`), validating it as Go's `filepath.Match` would.
fn compile(pattern: &str) -> Result<PatternKind, PatternError> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Glob,
    }
    let syntax = |reason| PatternError::Syntax {
        pattern: pattern.to_string(),
        reason,
    };
    let characters: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut detected = Detected::Exact;
    let mut index = 0;
    let mut token_number = 0;
    while index < characters.len() {
        let character = characters[index];
        index += 1;
        match character {
            '*' if characters.get(index) == Some(&'*') => {
                index += 1;
                // `**/` is `**` with the slash eaten.
                if characters.get(index) == Some(&'/') {
                    index += 1;
                }
                if index == characters.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        detected = Detected::Glob;
                    }
                    tokens.push(Token::AnyRest);
                } else {
                    tokens.push(Token::AnyDirs);
                    detected = Detected::Glob;
                }
                if token_number == 0 {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                detected = Detected::Glob;
            }
            '?' => {
                tokens.push(Token::AnyChar);
                detected = Detected::Glob;
            }
            '\\' => {
                let Some(&escaped) = characters.get(index) else {
                    return Err(syntax("trailing backslash"));
                };
                index += 1;
                tokens.push(Token::Literal(escaped));
                detected = Detected::Glob;
            }
            '[' => {
                let (class, next) = parse_class(&characters, index).map_err(syntax)?;
                tokens.push(class);
                index = next;
                detected = Detected::Glob;
            }
            ']' => {
                tokens.push(Token::Literal(']'));
                detected = Detected::Glob;
            }
            other => tokens.push(Token::Literal(other)),
        }
        token_number += 1;
    }
    Ok(match detected {
        Detected::Exact => PatternKind::Exact(pattern.to_string()),
        // Strip the trailing `**` / the leading `**`, as patternmatcher does on the text.
        Detected::Prefix => PatternKind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Detected::Suffix => PatternKind::Suffix(pattern[2..].to_string()),
        Detected::Glob => PatternKind::Glob(tokens),
    })
}

/// Parses a character class whose `[` is just before `start`; returns it and the index after `]`.
fn parse_class(characters: &[char], start: usize) -> Result<(Token, usize), &'static str> {
    let mut index = start;
    let mut negated = false;
    if characters.get(index) == Some(&'^') {
        negated = true;
        index += 1;
    }
    let mut ranges = Vec::new();
    loop {
        match characters.get(index) {
            None => return Err("unterminated character class"),
            Some(']') if !ranges.is_empty() => {
                return Ok((Token::Class { negated, ranges }, index + 1))
            }
            _ => {}
        }
        let (low, next) = class_character(characters, index)?;
        index = next;
        let mut high = low;
        if characters.get(index) == Some(&'-') {
            let (upper, next) = class_character(characters, index + 1)?;
            high = upper;
            index = next;
        }
        if low > high {
            return Err("character class range out of order");
        }
        ranges.push((low, high));
    }
}

/// One (possibly escaped) character of a class, as Go's `getEsc`.
fn class_character(characters: &[char], mut index: usize) -> Result<(char, usize), &'static str> {
    match characters.get(index) {
        None => return Err("unterminated character class"),
        Some('-') | Some(']') => return Err("empty or malformed character class"),
        Some('\\') => index += 1,
        Some(_) => {}
    }
    let Some(&character) = characters.get(index) else {
        return Err("unterminated character class");
    };
    index += 1;
    if index >= characters.len() {
        return Err("unterminated character class");
    }
    Ok((character, index))
}

/// Whether the literal tokens `tokens` starts with are the first characters of `characters`
/// (no literal, or all of them matching: the rest is the glob's to decide).
fn leading_literals_match<'t>(
    tokens: impl Iterator<Item = &'t Token>,
    mut characters: impl Iterator<Item = char>,
) -> bool {
    for token in tokens {
        let Token::Literal(literal) = token else {
            return true;
        };
        if characters.next() != Some(*literal) {
            return false;
        }
    }
    true
}

/// The set of live positions of a glob while matching, two per token: at the token, and inside
/// a `**` that has started consuming a directory run. Stepping writes the next set into spare
/// buffers and swaps them: no allocation per character (a `.dockerignore` with globs runs
/// these for every file of the context).
struct StateSet {
    at: Vec<bool>,
    inside: Vec<bool>,
    next_at: Vec<bool>,
    next_inside: Vec<bool>,
}

impl StateSet {
    fn start(tokens: &[Token]) -> StateSet {
        let mut set = StateSet {
            at: vec![false; tokens.len() + 1],
            inside: vec![false; tokens.len() + 1],
            next_at: vec![false; tokens.len() + 1],
            next_inside: vec![false; tokens.len() + 1],
        };
        set.at[0] = true;
        set.close(tokens);
        set
    }

    /// Follows the empty transitions: `*`, `**` may match nothing.
    fn close(&mut self, tokens: &[Token]) {
        for (index, token) in tokens.iter().enumerate() {
            if self.at[index] && matches!(token, Token::Star | Token::AnyRest | Token::AnyDirs) {
                self.at[index + 1] = true;
            }
        }
    }

    /// Consumes one character.
    fn step(&mut self, tokens: &[Token], character: char) {
        self.next_at.fill(false);
        self.next_inside.fill(false);
        let (next_at, next_inside) = (&mut self.next_at, &mut self.next_inside);
        for (index, token) in tokens.iter().enumerate() {
            if self.inside[index] {
                next_inside[index] = true;
                if character == '/' {
                    next_at[index + 1] = true;
                }
            }
            if !self.at[index] {
                continue;
            }
            match token {
                Token::Literal(literal) => {
                    if *literal == character {
                        next_at[index + 1] = true;
                    }
                }
                Token::AnyChar => {
                    if character != '/' {
                        next_at[index + 1] = true;
                    }
                }
                Token::Class { negated, ranges } => {
                    let within = ranges
                        .iter()
                        .any(|&(low, high)| low <= character && character <= high);
                    if within != *negated {
                        next_at[index + 1] = true;
                    }
                }
                Token::Star => {
                    if character != '/' {
                        next_at[index] = true;
                    }
                }
                Token::AnyRest => next_at[index] = true,
                Token::AnyDirs => {
                    next_inside[index] = true;
                    if character == '/' {
                        next_at[index + 1] = true;
                    }
                }
            }
        }
        std::mem::swap(&mut self.at, &mut self.next_at);
        std::mem::swap(&mut self.inside, &mut self.next_inside);
        self.close(tokens);
    }

    fn is_empty(&self) -> bool {
        !self.at.iter().chain(self.inside.iter()).any(|&live| live)
    }

    fn accepts(&self, tokens: &[Token]) -> bool {
        self.at[tokens.len()]
    }

    /// Whether some live position still has pattern left to match.
    fn can_continue(&self, tokens: &[Token]) -> bool {
        self.at[..tokens.len()]
            .iter()
            .chain(self.inside.iter())
            .any(|&live| live)
    }
}

/// Matching results of a directory, handed down to its children while walking a tree
/// (patternmatcher's `MatchInfo`): for each pattern, whether it matched the directory or one of
/// its parents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of patterns; the last one matching a path decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    has_exclusions: bool,
}

impl PatternMatcher {
    /// Compiles patterns; blank ones are skipped, each is trimmed and cleaned, `!` negates.
    pub fn new<I, S>(patterns: I) -> Result<PatternMatcher, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut matcher = PatternMatcher::default();
        for raw in patterns {
            let raw = raw.as_ref();
            if raw.trim().is_empty() {
                continue;
            }
            let pattern = Pattern::new(raw)?;
            matcher.has_exclusions |= pattern.exclusion;
            matcher.patterns.push(pattern);
        }
        Ok(matcher)
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is a `!` pattern.
    pub fn has_exclusions(&self) -> bool {
        self.has_exclusions
    }

    /// Whether the path (relative to the root, `/`-separated) is matched: the last pattern
    /// matching it or one of its parents is not a `!` pattern. The root itself never matches.
    pub fn matches(&self, path: &str) -> bool {
        let path = normalize_relative(path);
        if path == "." {
            return false;
        }
        let mut matched = false;
        for pattern in &self.patterns {
            // Only a pattern that could change the answer is worth evaluating.
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches_or_parent(&path) {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// [`matches`](Self::matches) for walkers: `parent` is the [`MatchInfo`] returned for the
    /// path's directory (or the default value for a path at the root, or when unknown). Returns
    /// whether the path matches and the info to hand to its children.
    pub fn matches_with_parent(&self, path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
        let known = parent.parent_matched.len() == self.patterns.len();
        // Below a directory every pattern matched, every pattern matches (its parent does),
        // whatever the name: the walk of a context under an included directory takes this way
        // for every entry, with no path to clean or pattern to run. A clean path other than
        // `.` and `/` never normalizes to `.`, the one path that matches nothing.
        if known
            && !self.patterns.is_empty()
            && parent.parent_matched.iter().all(|matched| *matched)
            && !matches!(path, "" | "." | "/")
            && is_clean(path)
        {
            let matched = self
                .patterns
                .last()
                .is_some_and(|pattern| !pattern.exclusion);
            return (matched, parent.clone());
        }
        let path = normalize_relative(path);
        let mut info = MatchInfo {
            parent_matched: Vec::with_capacity(self.patterns.len()),
        };
        let mut matched = false;
        for (index, pattern) in self.patterns.iter().enumerate() {
            let pattern_matches = if path == "." {
                false
            } else if known {
                parent.parent_matched[index] || pattern.matches_exactly(&path)
            } else {
                pattern.matches_or_parent(&path)
            };
            info.parent_matched.push(pattern_matches);
            if pattern_matches {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }

    /// The result every path below a directory gets, when its [`MatchInfo`] (`parent`, from
    /// [`matches_with_parent`](Self::matches_with_parent)) already decides it; `None` when the
    /// names below still matter. The last pattern that matched the directory matches
    /// everything below it; when every pattern after it is of the same kind (all `!` or none),
    /// whichever of them matches a path below gives the same answer. With no pattern matching
    /// the directory, only a list of `!` patterns decides (nothing below matches). The info
    /// of everything below may be taken as `parent` itself.
    pub fn settled_below(&self, parent: &MatchInfo) -> Option<bool> {
        if parent.parent_matched.len() != self.patterns.len() || self.patterns.is_empty() {
            return None;
        }
        match parent.parent_matched.iter().rposition(|matched| *matched) {
            Some(last) => {
                let exclusion = self.patterns[last].exclusion;
                self.patterns[last + 1..]
                    .iter()
                    .all(|pattern| pattern.exclusion == exclusion)
                    .then_some(!exclusion)
            }
            None => self
                .patterns
                .iter()
                .all(|pattern| pattern.exclusion)
                .then_some(false),
        }
    }

    /// Whether a walker may skip directory `dir` entirely because it is matched and no `!`
    /// pattern could re-include anything inside it (for exclude lists such as `.dockerignore`).
    pub fn can_skip_matched_dir(&self, dir: &str) -> bool {
        let dir = normalize_relative(dir);
        dir != "."
            && self.matches(&dir)
            && !self
                .patterns
                .iter()
                .any(|pattern| pattern.exclusion && pattern.could_match_inside(&dir))
    }

    /// Whether a walker may skip directory `dir` entirely because it is not matched and no
    /// pattern could match anything inside it (for include lists).
    pub fn can_skip_unmatched_dir(&self, dir: &str) -> bool {
        let dir = normalize_relative(dir);
        if dir == "." {
            return self.patterns.iter().all(|pattern| pattern.exclusion);
        }
        !self.matches(&dir)
            && !self
                .patterns
                .iter()
                .any(|pattern| !pattern.exclusion && pattern.could_match_inside(&dir))
    }
}

/// A parsed `.dockerignore` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerIgnore {
    matcher: PatternMatcher,
    /// The file line each pattern came from.
    lines: Vec<usize>,
}

impl DockerIgnore {
    /// Reads a `.dockerignore` file as moby's reader does: a UTF-8 byte order mark is dropped,
    /// lines starting with `#` in column 1 are comments, lines are trimmed, blank ones skipped,
    /// each pattern is cleaned and a leading `/` removed (so `/foo` and `foo` are the same).
    pub fn parse(text: &str) -> Result<DockerIgnore, Error> {
        let mut ignore = DockerIgnore::default();
        for (line, raw) in read_patterns(text) {
            let pattern = Pattern::new(&raw).map_err(|source| Error::Pattern { line, source })?;
            ignore.matcher.has_exclusions |= pattern.exclusion;
            ignore.matcher.patterns.push(pattern);
            ignore.lines.push(line);
        }
        Ok(ignore)
    }

    /// Whether the path (relative to the context root) is excluded from the context.
    pub fn matches(&self, rel_path: &str) -> bool {
        self.matcher.matches(rel_path)
    }

    /// Whether a context walker may skip directory `rel_dir` without looking inside: it is
    /// excluded and no `!` pattern could re-include anything under it.
    pub fn can_skip_dir(&self, rel_dir: &str) -> bool {
        self.matcher.can_skip_matched_dir(rel_dir)
    }

    /// The matcher, for walkers that use [`PatternMatcher::matches_with_parent`].
    pub fn matcher(&self) -> &PatternMatcher {
        &self.matcher
    }

    /// The patterns as cleaned (with `!` kept), in file order: what BuildKit sends as the
    /// context's exclude patterns.
    pub fn patterns(&self) -> Vec<String> {
        self.matcher
            .patterns
            .iter()
            .map(Pattern::to_string)
            .collect()
    }

    /// The line of the file each pattern came from.
    pub fn pattern_lines(&self) -> &[usize] {
        &self.lines
    }
}

/// The pattern lines of a `.dockerignore` text with their 1-based line numbers, cleaned as
/// moby's `ignorefile.ReadAll` does (not yet compiled).
pub fn read_patterns(text: &str) -> Vec<(usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut patterns = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean_path(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        patterns.push((index + 1, cleaned));
    }
    patterns
}

/// A path relative to the root, cleaned, with any leading `/` dropped; `.` for the root.
fn normalize_relative(path: &str) -> String {
    let cleaned = clean_path(path);
    match cleaned.trim_start_matches('/') {
        "" => ".".to_string(),
        rest => rest.to_string(),
    }
}

/// Lexical path cleaning, as Go's `filepath.Clean` on Unix: one `/` between names, no `.`
/// names, `..` folded into the name before it, no trailing `/`; `.` for an empty result.
pub fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    if is_clean(path) {
        return path.to_string();
    }
    let rooted = path.starts_with('/');
    let mut names: Vec<&str> = Vec::new();
    for name in path.split('/') {
        match name {
            "" | "." => {}
            ".." => {
                if names.last().is_some_and(|last| *last != "..") {
                    names.pop();
                } else if !rooted {
                    names.push("..");
                }
            }
            other => names.push(other),
        }
    }
    let joined = names.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Whether [`clean_path`] would give `path` back unchanged: `/`, or names (after one leading
/// `/` if any) that are neither empty, `.` nor `..`.
fn is_clean(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let names = path.strip_prefix('/').unwrap_or(path);
    !names.is_empty()
        && names
            .split('/')
            .all(|name| !name.is_empty() && name != "." && name != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_with_literal_ends() {
        for (pattern, path, expected) in [
            ("a*/b", "a/b", true),
            ("a*/b", "ab/b", true),
            ("a*/b", "b/b", false),
            ("a*/b", "a/bc", false),
            ("**/*.go", "x.go", true),
            ("**/*.go", "a/b/x.go", true),
            ("**/*.go", "a/b/x.gox", false),
            ("*.go", "a.go", true),
            ("*.go", "d/a.go", false),
            ("é?x", "éax", true),
            ("é?x", "eax", false),
            ("[ab]c", "ac", true),
            ("x[ab]", "xb", true),
            ("x[ab]", "xc", false),
            ("ab*ab", "ab", false),
            ("ab*ab", "abab", true),
            ("ab*ab", "abxab", true),
        ] {
            let compiled = Pattern::new(pattern).expect("pattern");
            assert_eq!(
                compiled.matches_exactly(path),
                expected,
                "{pattern} on {path}"
            );
        }
    }

    #[test]
    fn settled_below_agrees_with_the_walk() {
        let cases: &[&[&str]] = &[
            &["app"],
            &["app", "!app/keep"],
            &["app/**", "!app/x/*.txt"],
            &["*", "!b"],
            &["a/b"],
            &["app", "b", "x/*.md"],
            &["app", "!app/x", "app/x/keep"],
            &["!app", "!b"],
            &["*.txt", "app", "!app/keep"],
        ];
        for patterns in cases {
            let matcher = PatternMatcher::new(patterns.iter().copied()).expect("patterns");
            for dir in ["app", "app/x", "a", "a/b", "b", "c"] {
                let mut info = MatchInfo::default();
                let mut walked = String::new();
                for name in dir.split('/') {
                    if !walked.is_empty() {
                        walked.push('/');
                    }
                    walked.push_str(name);
                    info = matcher.matches_with_parent(&walked, &info).1;
                }
                let Some(settled) = matcher.settled_below(&info) else {
                    continue;
                };
                for below in ["f", "x/y.txt", "x/keep", "keep", "deep/er/file", "x/a.md"] {
                    let path = format!("{dir}/{below}");
                    assert_eq!(
                        matcher.matches(&path),
                        settled,
                        "{patterns:?}: {path} below settled {dir}"
                    );
                }
            }
        }
        // not settled where a name below still matters
        let matcher = PatternMatcher::new(["app", "!app/keep"]).expect("patterns");
        let info = matcher.matches_with_parent("app", &MatchInfo::default()).1;
        assert_eq!(matcher.settled_below(&info), None);
    }

    #[test]
    fn clean_path_matches_go() {
        for (input, expected) in [
            ("", "."),
            ("a/b/", "a/b"),
            ("a//b", "a/b"),
            ("./a", "a"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("/", "/"),
            ("a/..", "."),
            ("../../x/..", "../.."),
            ("/a/b", "/a/b"),
            ("a/b", "a/b"),
            ("//a", "/a"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b"),
            ("/a/b/..", "/a"),
            ("a/.../b", "a/.../b"),
            (".", "."),
            ("..", ".."),
            ("/.", "/"),
            ("/..", "/"),
            (".a/b.", ".a/b."),
        ] {
            assert_eq!(clean_path(input), expected, "{input}");
        }
    }

    #[test]
    fn kinds_follow_patternmatcher() {
        assert_eq!(
            compile("foo.txt").ok(),
            Some(PatternKind::Exact("foo.txt".into()))
        );
        assert_eq!(
            compile("foo/**").ok(),
            Some(PatternKind::Prefix("foo/".into()))
        );
        assert_eq!(
            compile("**/foo").ok(),
            Some(PatternKind::Suffix("/foo".into()))
        );
        assert!(matches!(compile("**/*.go"), Ok(PatternKind::Glob(_))));
    }
}
