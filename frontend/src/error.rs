//! The frontend's error: every Dockerfile error names the file, line and column and quotes the line.

use std::fmt;

/// Where in a Dockerfile something went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// The file's name as the user gave it (`Dockerfile`, `ci/Dockerfile.test`, `-` for stdin).
    pub file: String,
    /// 1-based line; 0 when the error concerns the whole file.
    pub line: usize,
    /// 1-based column; 0 when unknown.
    pub column: usize,
    /// The text of that line (without its newline), quoted in the message.
    pub line_text: String,
}

/// An error in a Dockerfile or in the build's arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct Error {
    pub location: Location,
    /// What was wrong, lower case, no trailing period.
    pub message: String,
    /// A suggestion for a misspelt name, shown as `did you mean "..."?`.
    pub did_you_mean: Option<String>,
}

impl Error {
    /// An error at a location.
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        Error {
            location,
            message: message.into(),
            did_you_mean: None,
        }
    }

    /// An error not tied to a line (arguments, `--target`).
    pub fn general(file: &str, message: impl Into<String>) -> Self {
        Error::new(
            Location {
                file: file.to_string(),
                ..Location::default()
            },
            message,
        )
    }

    /// Adds a "did you mean" suggestion.
    pub fn with_suggestion(mut self, suggestion: Option<String>) -> Self {
        self.did_you_mean = suggestion;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = &self.location;
        write!(f, "{}", location.file)?;
        if location.line > 0 {
            write!(f, ":{}", location.line)?;
            if location.column > 0 {
                write!(f, ":{}", location.column)?;
            }
        }
        write!(f, ": {}", self.message)?;
        if let Some(suggestion) = &self.did_you_mean {
            write!(f, " (did you mean \"{suggestion}\"?)")?;
        }
        if location.line > 0 && !location.line_text.is_empty() {
            write!(f, "\n  {:>5} | {}", location.line, location.line_text)?;
        }
        Ok(())
    }
}

/// The closest candidate to `input` by edit distance, if close enough to be a likely typo.
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let input_lower = input.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = edit_distance(&input_lower, &candidate.to_ascii_lowercase());
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    let (distance, candidate) = best?;
    let limit = (input.chars().count().max(candidate.chars().count()) / 3).max(1);
    (distance <= limit && distance > 0 || (distance == 0 && input != candidate))
        .then(|| candidate.to_string())
}

/// Levenshtein distance over chars, counting a swap of two adjacent chars (`cpoy`) as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before_previous: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            current[j + 1] = (previous[j] + cost)
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
            if i > 0 && j > 0 && *ca == b[j - 1] && a[i - 1] == *cb {
                current[j + 1] = current[j + 1].min(before_previous[j - 1] + 1);
            }
        }
        std::mem::swap(&mut before_previous, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(closest("RUNN", ["RUN", "COPY", "FROM"]), Some("RUN".into()));
        assert_eq!(
            closest("build", ["builder", "final"]),
            Some("builder".into())
        );
        assert_eq!(closest("zzzzzz", ["RUN", "COPY"]), None);
        assert_eq!(closest("cpoy", ["RUN", "COPY"]), Some("COPY".into()));
        assert_eq!(edit_distance("hots", "host"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn message_names_file_line_and_quotes_it() {
        let error = Error::new(
            Location {
                file: "Dockerfile".into(),
                line: 3,
                column: 1,
                line_text: "RUNN x".into(),
            },
            "unknown instruction: RUNN",
        )
        .with_suggestion(Some("RUN".into()));
        assert_eq!(
            error.to_string(),
            "Dockerfile:3:1: unknown instruction: RUNN (did you mean \"RUN\"?)\n      3 | RUNN x"
        );
    }
}
