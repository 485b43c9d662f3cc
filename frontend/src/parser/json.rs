//! The JSON (exec) form of an instruction: a JSON array of strings, decoded the way Go's
//! `encoding/json` decodes it (strict grammar, lone surrogates become U+FFFD, nesting limited to
//! 10000 levels), without recursion so no input can exhaust the stack.

/// What the text after an instruction turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonArray {
    /// Not valid JSON (the caller falls back to the shell form).
    Invalid,
    /// A valid JSON array whose items are all strings.
    Strings(Vec<String>),
    /// A valid JSON array with an item that is not a string (an error for the caller).
    NotStrings,
}

/// Go's `encoding/json` nesting limit.
const MAX_NESTING_DEPTH: usize = 10_000;

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek();
        if byte.is_some() {
            self.position += 1;
        }
        byte
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    fn expect(&mut self, wanted: u8) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.position.checked_add(word.len())?;
        if self.bytes.get(self.position..end)? == word {
            self.position = end;
            Some(())
        } else {
            None
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.bytes.get(at..at + 4)?;
        let mut value = 0u32;
        for &digit in digits {
            value = value * 16 + char::from(digit).to_digit(16)?;
        }
        Some(value)
    }

    /// A string, its opening quote not yet read; returns the decoded text.
    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut decoded: Vec<u8> = Vec::new();
        loop {
            let byte = self.next()?;
            match byte {
                b'"' => break,
                0..=0x1f => return None,
                b'\\' => {
                    let escaped = self.next()?;
                    let character = match escaped {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let unit = self.hex4(self.position)?;
                            self.position += 4;
                            if (0xd800..0xe000).contains(&unit) {
                                let low = if self.bytes.get(self.position..self.position + 2)
                                    == Some(b"\\u")
                                {
                                    self.hex4(self.position + 2)
                                } else {
                                    None
                                };
                                match low {
                                    Some(low)
                                        if (0xd800..0xdc00).contains(&unit)
                                            && (0xdc00..0xe000).contains(&low) =>
                                    {
                                        self.position += 6;
                                        char::from_u32(
                                            0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00),
                                        )
                                        .unwrap_or('\u{fffd}')
                                    }
                                    _ => '\u{fffd}',
                                }
                            } else {
                                char::from_u32(unit).unwrap_or('\u{fffd}')
                            }
                        }
                        _ => return None,
                    };
                    let mut buffer = [0u8; 4];
                    decoded.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
                }
                _ => decoded.push(byte),
            }
        }
        // The input is a &str and only whole characters were copied, so this is valid UTF-8.
        Some(
            String::from_utf8(decoded)
                .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()),
        )
    }

    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.position += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.position += 1;
            self.at_least_one_digit()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.position += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.position += 1;
            }
            self.at_least_one_digit()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.position += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return None;
        }
        self.digits();
        Some(())
    }

    /// Skips any JSON value, `depth` containers deep already; iterative.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            // A value is expected here.
            self.skip_whitespace();
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                container @ (b'[' | b'{') => {
                    self.position += 1;
                    open.push(container);
                    if depth + open.len() > MAX_NESTING_DEPTH {
                        return None;
                    }
                    self.skip_whitespace();
                    let closing = if container == b'[' { b']' } else { b'}' };
                    if self.peek() == Some(closing) {
                        self.position += 1;
                        open.pop();
                    } else if container == b'{' {
                        self.object_key()?;
                        continue;
                    } else {
                        continue;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // After a value: close containers or move to the next item.
            loop {
                let Some(&container) = open.last() else {
                    return Some(());
                };
                self.skip_whitespace();
                match (container, self.next()?) {
                    (_, b',') => {
                        if container == b'{' {
                            self.object_key()?;
                        }
                        break;
                    }
                    (b'[', b']') | (b'{', b'}') => {
                        open.pop();
                    }
                    _ => return None,
                }
            }
        }
    }

    /// `"key" :` inside an object.
    fn object_key(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.peek() != Some(b'"') {
            return None;
        }
        self.string()?;
        self.skip_whitespace();
        self.expect(b':')
    }

    /// The top-level array: `Some(items)` where a non-string item is `None`.
    fn array(&mut self) -> Option<Vec<Option<String>>> {
        self.skip_whitespace();
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.position += 1;
        } else {
            loop {
                self.skip_whitespace();
                if self.peek() == Some(b'"') {
                    items.push(Some(self.string()?));
                } else {
                    self.skip_value(1)?;
                    items.push(None);
                }
                self.skip_whitespace();
                match self.next()? {
                    b',' => continue,
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.skip_whitespace();
        (self.position == self.bytes.len()).then_some(items)
    }
}

/// Decodes `text` as a JSON array of strings.
pub(crate) fn parse_string_array(text: &str) -> JsonArray {
    let mut reader = Reader {
        bytes: text.as_bytes(),
        position: 0,
    };
    match reader.array() {
        None => JsonArray::Invalid,
        Some(items) => match items.into_iter().collect::<Option<Vec<String>>>() {
            Some(strings) => JsonArray::Strings(strings),
            None => JsonArray::NotStrings,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> JsonArray {
        JsonArray::Strings(items.iter().map(|item| item.to_string()).collect())
    }

    #[test]
    fn decodes_arrays_of_strings() {
        assert_eq!(parse_string_array("[]"), strings(&[]));
        assert_eq!(
            parse_string_array(" [ \"a\" ,\t\"b\" ] \n"),
            strings(&["a", "b"])
        );
        assert_eq!(
            parse_string_array(
                r#"["\" \\ \/ \b \f \n \r \t \u0000 \u00e9 \ud83d\ude00 \ud83d x"]"#
            ),
            strings(&["\" \\ / \u{8} \u{c} \n \r \t \0 é 😀 \u{fffd} x"])
        );
    }

    #[test]
    fn tells_invalid_from_not_strings() {
        for invalid in [
            "[",
            "[\"a\"",
            "['a']",
            "[\"a\",]",
            "[01]",
            "[\"a\"] x",
            "[\"\t\"]",
            "[\"\\x\"]",
            "[tru]",
            "[{1:2}]",
        ] {
            assert_eq!(parse_string_array(invalid), JsonArray::Invalid, "{invalid}");
        }
        for not_strings in [
            "[1]",
            "[\"a\", [\"b\"]]",
            "[null]",
            "[{\"a\": [1, {}]}]",
            "[-0.5e+3, true, false]",
        ] {
            assert_eq!(
                parse_string_array(not_strings),
                JsonArray::NotStrings,
                "{not_strings}"
            );
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_string_array(&deep), JsonArray::Invalid);
        let fine = format!("[{}{}]", "[".repeat(9_000), "]".repeat(9_000));
        assert_eq!(parse_string_array(&fine), JsonArray::NotStrings);
    }
}
