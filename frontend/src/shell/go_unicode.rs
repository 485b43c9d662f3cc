//! Character classes and string quoting that behave like Go's `unicode` and `strconv` packages.
//!
//! BuildKit is written in Go; where its behaviour depends on Go's notion of a letter, a digit,
//! a space or a printable character, kiln asks these functions so it reaches the same answers.

use unicode_general_category::{get_general_category, GeneralCategory};

/// Go's `unicode.IsSpace`: the Unicode White_Space property (which includes U+0085 and U+00A0).
pub fn is_space(character: char) -> bool {
    character.is_whitespace()
}

/// Go's `unicode.IsLetter`: general category L (Lu, Ll, Lt, Lm, Lo).
pub fn is_letter(character: char) -> bool {
    if character.is_ascii() {
        return character.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(character),
        GeneralCategory::UppercaseLetter
            | GeneralCategory::LowercaseLetter
            | GeneralCategory::TitlecaseLetter
            | GeneralCategory::ModifierLetter
            | GeneralCategory::OtherLetter
    )
}

/// Go's `unicode.IsDigit`: general category Nd.
pub fn is_digit(character: char) -> bool {
    if character.is_ascii() {
        return character.is_ascii_digit();
    }
    get_general_category(character) == GeneralCategory::DecimalNumber
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
pub fn is_print(character: char) -> bool {
    if character.is_ascii() {
        return (' '..='~').contains(&character);
    }
    use GeneralCategory::*;
    matches!(
        get_general_category(character),
        UppercaseLetter
            | LowercaseLetter
            | TitlecaseLetter
            | ModifierLetter
            | OtherLetter
            | NonspacingMark
            | SpacingMark
            | EnclosingMark
            | DecimalNumber
            | LetterNumber
            | OtherNumber
            | ConnectorPunctuation
            | DashPunctuation
            | OpenPunctuation
            | ClosePunctuation
            | InitialPunctuation
            | FinalPunctuation
            | OtherPunctuation
            | MathSymbol
            | CurrencySymbol
            | ModifierSymbol
            | OtherSymbol
    )
}

/// Go's `strconv.Quote`: a double-quoted string with Go escapes (`\"`, `\\`, `\n`, `\x00`,
/// `\u00a0`, ...); printable Unicode is kept as is.
pub fn go_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        if character == '"' || character == '\\' {
            quoted.push('\\');
            quoted.push(character);
            continue;
        }
        if is_print(character) {
            quoted.push(character);
            continue;
        }
        match character {
            '\u{07}' => quoted.push_str("\\a"),
            '\u{08}' => quoted.push_str("\\b"),
            '\u{0c}' => quoted.push_str("\\f"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            '\u{0b}' => quoted.push_str("\\v"),
            _ => {
                let code = u32::from(character);
                if code < 0x20 || code == 0x7f {
                    quoted.push_str(&format!("\\x{code:02x}"));
                } else if code < 0x10000 {
                    quoted.push_str(&format!("\\u{code:04x}"));
                } else {
                    quoted.push_str(&format!("\\U{code:08x}"));
                }
            }
        }
    }
    quoted.push('"');
    quoted
}

/// Go's `fmt.Sprintf("%q", list)` for a `[]string`: `["a" "b"]`.
pub fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| go_quote(item)).collect();
    format!("[{}]", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a"), "\"a\"");
        assert_eq!(
            go_quote("\" \\ / \u{8} \u{c} \n \r \t \0"),
            r#""\" \\ / \b \f \n \r \t \x00""#
        );
        assert_eq!(go_quote("♥☃한국어"), "\"♥☃한국어\"");
        assert_eq!(
            go_quote("\u{a0}\u{ad}\u{7f}\u{1F600}\u{E0001}"),
            r#""\u00a0\u00ad\x7f😀\U000e0001""#
        );
        assert_eq!(
            go_quote_list(&["--a=b".into(), "c".into()]),
            r#"["--a=b" "c"]"#
        );
    }

    #[test]
    fn classes_like_go() {
        assert!(is_letter('한') && is_letter('é') && !is_letter('_') && !is_letter('Ⅻ'));
        assert!(is_digit('٣') && !is_digit('Ⅻ') && !is_digit('²'));
        assert!(is_space('\u{85}') && is_space('\u{a0}') && !is_space('x'));
    }
}
