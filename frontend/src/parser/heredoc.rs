//! Heredocs (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`) as BuildKit recognises them in RUN, COPY and
//! ADD lines.

use crate::ast::Heredoc;
use crate::shell::{LexError, Lexer, NoEnv};

/// Reads one word as a heredoc start: `[digits]<<[-][blanks]NAME`. `Ok(None)` when the word is
/// not a heredoc; an error when its name is badly quoted (`<<'EOF`).
///
/// The returned heredoc has empty content: the body is read from the following lines.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, LexError> {
    let digits_length = word.bytes().take_while(u8::is_ascii_digit).count();
    let (digits, after_digits) = word.split_at(digits_length);
    let Some(after_marker) = after_digits.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after_dash) = match after_marker.strip_prefix('-') {
        Some(after_dash) => (true, after_dash),
        None => (false, after_marker),
    };
    let name_word = after_dash.trim_start_matches(['\t', '\n', '\u{c}', '\r', ' ']);
    if name_word.contains('<') || name_word.is_empty() {
        return Ok(None);
    }
    let file_descriptor = if digits.is_empty() {
        None
    } else {
        Some(digits.parse::<u32>().unwrap_or(u32::MAX))
    };

    // Read the name with and without its quotes: if quotes were removed, some part of the
    // name was quoted, and the body is not expanded.
    let mut lexer = Lexer {
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let words = lexer.process_words(name_word, &NoEnv)?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    lexer.raw_quotes = true;
    let raw_words = lexer.process_words(name_word, &NoEnv)?;
    let [raw_name] = raw_words.as_slice() else {
        return Ok(None);
    };
    let quote_count = |text: &str| {
        text.chars()
            .filter(|&character| character == '\'' || character == '"')
            .count()
    };
    let expand = quote_count(name) == quote_count(raw_name);
    Ok(Some(Heredoc {
        name: name.clone(),
        content: String::new(),
        expand,
        chomp,
        file_descriptor,
    }))
}

/// The heredocs started on an instruction line, in order.
pub(crate) fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, LexError> {
    let lexer = Lexer {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let words = lexer.process_words(line, &NoEnv).unwrap_or_default();
    let mut heredocs = Vec::new();
    for word in words {
        if let Some(heredoc) = parse_heredoc(&word)? {
            heredocs.push(heredoc);
        }
    }
    Ok(heredocs)
}

/// Removes the leading tabs of every line (`<<-`).
pub fn chomp_heredoc_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_heredoc_words() {
        for valid in [
            "<<EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "<<-EOF",
            "<<-'EOF'",
            "<<-\"EOF\"",
            "<<EO\"F\"",
            "<< EOF",
            "<<- EOF",
        ] {
            let heredoc = parse_heredoc(valid).unwrap().unwrap();
            assert_eq!(heredoc.name, "EOF", "{valid}");
        }
        for invalid in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(parse_heredoc(invalid).is_err(), "{invalid}");
        }
        for not_heredoc in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
            assert_eq!(parse_heredoc(not_heredoc).unwrap(), None, "{not_heredoc}");
        }
        let heredoc = parse_heredoc("3<<-'E'O").unwrap().unwrap();
        assert_eq!(
            (
                heredoc.name.as_str(),
                heredoc.expand,
                heredoc.chomp,
                heredoc.file_descriptor
            ),
            ("EO", false, true, Some(3))
        );
    }

    #[test]
    fn finds_heredocs_in_lines() {
        let names = |line: &str| {
            heredocs_from_line(line)
                .unwrap()
                .into_iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("RUN <<EOF"), ["EOF"]);
        assert_eq!(names("RUN <<-EOF"), ["EOF"]);
        assert!(names("RUN <<- EOF").is_empty());
        assert_eq!(names("RUN << -EOF"), ["-EOF"]);
        assert_eq!(names("RUN 4<<EOF <<EOF2"), ["EOF", "EOF2"]);
        assert_eq!(names("RUN cat <<EOF > /f"), ["EOF"]);
        assert!(names("RUN '<<EOF'").is_empty());
        assert!(names("RUN \"<<EOF\"").is_empty());
    }

    #[test]
    fn chomps_leading_tabs() {
        assert_eq!(
            chomp_heredoc_content("\thello\n\t\tworld\n x\t\n"),
            "hello\nworld\n x\t\n"
        );
    }
}
