//! Parsers for flag and argument values, with the rules of the Go functions BuildKit uses
//! (`time.ParseDuration`, `strconv.ParseBool`, go-units `RAMInBytes`, chmod modes, port specs).

/// Parses a duration as Go's `time.ParseDuration` (`1h30m`, `1.5s`, `300ms`, `-2us`, `0`);
/// returns nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<i64, String> {
    let invalid = || format!("invalid duration {text:?}");
    let mut rest = text;
    let mut negative = false;
    if let Some(first) = rest.chars().next() {
        if first == '-' || first == '+' {
            negative = first == '-';
            rest = &rest[1..];
        }
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let whole = &rest[..digits];
        rest = &rest[digits..];
        let mut fraction = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let fraction_digits = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            fraction = &after_dot[..fraction_digits];
            rest = &after_dot[fraction_digits..];
            if whole.is_empty() && fraction.is_empty() {
                return Err(invalid());
            }
        } else if whole.is_empty() {
            return Err(invalid());
        }
        let unit_length = rest
            .find(|character: char| character == '.' || character.is_ascii_digit())
            .unwrap_or(rest.len());
        if unit_length == 0 {
            return Err(format!("missing unit in duration {text:?}"));
        }
        let unit = &rest[..unit_length];
        rest = &rest[unit_length..];
        let nanoseconds_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        let overflow = || format!("invalid duration {text:?}: out of range");
        let whole_value: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| overflow())?
        };
        let mut value = whole_value
            .checked_mul(nanoseconds_per_unit)
            .ok_or_else(overflow)?;
        if !fraction.is_empty() {
            // Go truncates the fraction's contribution to whole nanoseconds.
            let digits = &fraction[..fraction.len().min(30)];
            let numerator: u128 = digits.parse().map_err(|_| overflow())?;
            let scale = 10u128.pow(digits.len() as u32);
            value = value
                .checked_add(
                    numerator
                        .checked_mul(nanoseconds_per_unit)
                        .ok_or_else(overflow)?
                        / scale,
                )
                .ok_or_else(overflow)?;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        if total > i64::MAX as u128 + u128::from(negative) {
            return Err(overflow());
        }
    }
    if negative {
        Ok((-(total as i128)) as i64)
    } else {
        Ok(total as i64)
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseUint(text, radix, 32)`: digits only, no sign or prefix.
pub fn parse_go_u32(text: &str, radix: u32) -> Option<u32> {
    if text.is_empty() || !text.chars().all(|character| character.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(text, radix).ok()
}

/// A size such as `64m`, `1.5GiB`, `100` as go-units' `RAMInBytes` reads it (binary multiples).
pub fn parse_ram_bytes(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size: {text:?}");
    let number_length = text
        .find(|character: char| !(character.is_ascii_digit() || character == '.'))
        .unwrap_or(text.len());
    let (number, mut suffix) = text.split_at(number_length);
    if number.is_empty() || !number.starts_with(|character: char| character.is_ascii_digit()) {
        return Err(invalid());
    }
    suffix = suffix.strip_prefix(' ').unwrap_or(suffix);
    let mut characters = suffix.chars().peekable();
    let multiplier: u64 = match characters.peek().map(char::to_ascii_lowercase) {
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some('t') => 1 << 40,
        Some('p') => 1 << 50,
        _ => 1,
    };
    if multiplier != 1 {
        characters.next();
    }
    if characters
        .peek()
        .is_some_and(|character| character.eq_ignore_ascii_case(&'i'))
    {
        characters.next();
    }
    if characters
        .peek()
        .is_some_and(|character| character.eq_ignore_ascii_case(&'b'))
    {
        characters.next();
    }
    if characters.next().is_some() {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// A `--chmod` value: octal bits, or a symbolic mode as chmod(1) (`u+x,go=rX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<ChmodClause>),
}

/// One comma-separated clause of a symbolic mode: who it applies to, then its actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmodClause {
    /// Some of `u`, `g`, `o`, `a`; empty means all.
    pub who: String,
    /// `(op, perms)` with op one of `+`, `-`, `=` and perms some of `rwxXst` or one of `ugo`.
    pub actions: Vec<(char, String)>,
}

/// Parses a `--chmod` value (already expanded), as BuildKit: octal up to 07777, else symbolic.
pub fn parse_chmod(text: &str) -> Result<Chmod, String> {
    let octal_error = || {
        format!(
            "invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"
        )
    };
    if text.starts_with(|character: char| character.is_ascii_digit()) {
        return match parse_go_u32(text, 8) {
            Some(bits) if bits <= 0o7777 => Ok(Chmod::Octal(bits)),
            _ => Err(octal_error()),
        };
    }
    let mut clauses = Vec::new();
    for clause_text in text.split(',') {
        let who_length = clause_text
            .find(|character: char| !"ugoa".contains(character))
            .unwrap_or(clause_text.len());
        let (who, mut rest) = clause_text.split_at(who_length);
        let mut actions = Vec::new();
        while let Some(operator) = rest
            .chars()
            .next()
            .filter(|character| "+-=".contains(*character))
        {
            rest = &rest[1..];
            let perms_length = rest
                .find(|character: char| "+-=".contains(character))
                .unwrap_or(rest.len());
            let perms = &rest[..perms_length];
            rest = &rest[perms_length..];
            let copies = perms.len() == 1 && "ugo".contains(perms);
            if !copies && !perms.chars().all(|character| "rwxXst".contains(character)) {
                return Err(format!(
                    "invalid chmod parameter: '{text}'. bad permission {perms:?}"
                ));
            }
            actions.push((operator, perms.to_string()));
        }
        if actions.is_empty() || !rest.is_empty() {
            return Err(format!("invalid chmod parameter: '{text}'. it should be octal or a symbolic mode such as u+x,go-w"));
        }
        clauses.push(ChmodClause {
            who: who.to_string(),
            actions,
        });
    }
    Ok(Chmod::Symbolic(clauses))
}

impl Chmod {
    /// The mode bits after applying this to a file whose mode is `current` (permission bits).
    pub fn apply(&self, current: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(bits) => return *bits,
            Chmod::Symbolic(clauses) => clauses,
        };
        let mut mode = current & 0o7777;
        for clause in clauses {
            let who = if clause.who.is_empty() {
                "a"
            } else {
                clause.who.as_str()
            };
            let (mut who_bits, mut special) = (0u32, 0u32);
            for character in who.chars() {
                match character {
                    'u' => (who_bits, special) = (who_bits | 0o700, special | 0o4000),
                    'g' => (who_bits, special) = (who_bits | 0o070, special | 0o2000),
                    'o' => (who_bits, special) = (who_bits | 0o007, special | 0o1000),
                    _ => (who_bits, special) = (0o777, 0o7000),
                }
            }
            for (operator, perms) in &clause.actions {
                let mut bits = 0u32;
                match perms.as_str() {
                    "u" => bits = spread((mode >> 6) & 7) & who_bits,
                    "g" => bits = spread((mode >> 3) & 7) & who_bits,
                    "o" => bits = spread(mode & 7) & who_bits,
                    perms => {
                        for character in perms.chars() {
                            bits |= match character {
                                'r' => 0o444 & who_bits,
                                'w' => 0o222 & who_bits,
                                'x' => 0o111 & who_bits,
                                'X' if is_dir || mode & 0o111 != 0 => 0o111 & who_bits,
                                's' => special & 0o6000,
                                't' => special & 0o1000,
                                _ => 0,
                            };
                        }
                    }
                }
                match operator {
                    '+' => mode |= bits,
                    '-' => mode &= !bits,
                    _ => mode = (mode & !(who_bits | (special & 0o6000))) | bits,
                }
            }
        }
        mode
    }
}

/// Repeats three permission bits into the user, group and other positions.
fn spread(bits: u32) -> u32 {
    bits << 6 | bits << 3 | bits
}

/// Parses one EXPOSE port spec (already expanded) as BuildKit: `[ip:][hostPort:]port[-end][/proto]`;
/// returns the `port/proto` keys of the image config (`80/tcp`).
pub fn parse_exposed_port(spec: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host_port, container) = match parts.as_slice() {
        [container] => ("".to_string(), "", *container),
        [host, container] => ("".to_string(), *host, *container),
        [.., host, container] => (parts[..parts.len() - 2].join(":"), *host, *container),
        [] => return Err(format!("invalid port: {spec:?}")),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!("invalid port: {spec:?}: no port specified"));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" => "tcp".to_string(),
        known @ ("tcp" | "udp" | "sctp") => known.to_string(),
        _ => return Err(format!("invalid port: {spec:?}: invalid proto: {proto}")),
    };
    if !ip.is_empty() {
        let bare = ip
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(&ip);
        if bare.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {ip}"));
        }
    }
    let (start, end) = parse_port_range(port)
        .map_err(|reason| format!("invalid containerPort: {port}: {reason}"))?;
    if !host_port.is_empty() {
        let (host_start, host_end) = parse_port_range(host_port)
            .map_err(|reason| format!("invalid hostPort: {host_port}: {reason}"))?;
        if end - start != host_end - host_start && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok((start..=end)
        .map(|number| format!("{number}/{proto}"))
        .collect())
}

fn parse_port_range(text: &str) -> Result<(u32, u32), String> {
    let number = |value: &str| -> Result<u32, String> {
        match value.parse::<u32>() {
            Ok(port) if port <= 65535 && !value.starts_with('+') => Ok(port),
            Ok(_) => Err("value out of range (0-65535)".to_string()),
            Err(_) => Err(format!("invalid port number {value:?}")),
        }
    };
    let (start, end) = match text.split_once('-') {
        Some((start, end)) => (start, Some(end)),
        None => (text, None),
    };
    let start_port = number(start)?;
    match end {
        None => Ok((start_port, start_port)),
        Some(end) if end == start => Ok((start_port, start_port)),
        Some(end) => {
            let end_port = number(end)?;
            if end_port < start_port {
                return Err(format!("invalid port range: {text}"));
            }
            Ok((start_port, end_port))
        }
    }
}

/// A heredoc marker word (`<<EOF`, `<<-"EOF"`, `3<<'X'`): returns its delimiter name.
pub(crate) fn heredoc_marker_name(word: &str) -> Option<String> {
    let rest = word.trim_start_matches(|character: char| character.is_ascii_digit());
    let rest = rest.strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest).trim_start();
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let name: String = rest
        .chars()
        .filter(|character| *character != '"' && *character != '\'')
        .collect();
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return None;
    }
    Some(name)
}

/// Splits one line of comma-separated values as Go's `encoding/csv` reads a record: a field
/// starting with `"` is quoted (`""` is a quote inside it); a bare `"` elsewhere is an error.
pub(crate) fn split_csv(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    if text.is_empty() {
        return Ok(fields);
    }
    if !text.contains('"') {
        // Nothing quoted: the fields are the text between the commas.
        fields.extend(text.split(',').map(str::to_string));
        return Ok(fields);
    }
    let characters: Vec<char> = text.chars().collect();
    let mut index = 0;
    loop {
        let mut field = String::new();
        if characters.get(index) == Some(&'"') {
            index += 1;
            loop {
                match characters.get(index) {
                    None => return Err("extraneous or missing \" in quoted-field".to_string()),
                    Some('"') if characters.get(index + 1) == Some(&'"') => {
                        field.push('"');
                        index += 2;
                    }
                    Some('"') => {
                        index += 1;
                        break;
                    }
                    Some(&character) => {
                        field.push(character);
                        index += 1;
                    }
                }
            }
            match characters.get(index) {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => index += 1,
                Some(_) => return Err("extraneous or missing \" in quoted-field".to_string()),
            }
        } else {
            loop {
                match characters.get(index) {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        index += 1;
                        break;
                    }
                    Some('"') => return Err("bare \" in non-quoted-field".to_string()),
                    Some(&character) => {
                        field.push(character);
                        index += 1;
                    }
                }
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        for (text, nanoseconds) in [
            ("0", 0i64),
            ("5s", 5_000_000_000),
            ("+5s", 5_000_000_000),
            ("-1.5h", -5_400_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("300ms", 300_000_000),
            ("1.5us", 1_500),
            ("1\u{b5}s", 1_000),
            ("1\u{3bc}s", 1_000),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("1ns", 1),
            ("0.0000000009s", 0),
            ("2562047h47m16.854775807s", i64::MAX),
        ] {
            assert_eq!(parse_go_duration(text), Ok(nanoseconds), "{text}");
        }
        for text in [
            "",
            "5",
            "s",
            ".s",
            "1x",
            "-",
            "1.5",
            "9999999999999999999h",
            "2562047h47m16.854775808s",
            "1s2",
        ] {
            assert!(parse_go_duration(text).is_err(), "{text} accepted");
        }
        assert_eq!(
            parse_go_duration("5"),
            Err("missing unit in duration \"5\"".to_string())
        );
    }

    #[test]
    fn ram_sizes_like_go_units() {
        for (text, bytes) in [
            ("100", 100u64),
            ("1k", 1024),
            ("1KB", 1024),
            ("1KiB", 1024),
            ("64m", 64 << 20),
            ("1.5g", 3 << 29),
            ("2 t", 2 << 40),
            ("1p", 1 << 50),
            ("1 ", 1),
        ] {
            assert_eq!(parse_ram_bytes(text), Ok(bytes), "{text}");
        }
        for text in ["", "k", "-1", "1x", "1.2.3", "1kk", "1  k", "1 kx"] {
            assert!(parse_ram_bytes(text).is_err(), "{text} accepted");
        }
    }

    #[test]
    fn chmod_octal_and_symbolic() {
        assert_eq!(parse_chmod("755"), Ok(Chmod::Octal(0o755)));
        assert_eq!(parse_chmod("0644"), Ok(Chmod::Octal(0o644)));
        assert_eq!(parse_chmod("7777"), Ok(Chmod::Octal(0o7777)));
        for bad in [
            "10000", "8", "75a", "", "rwx", "u+q", "u", "u+x,", "+x-y", "-0",
        ] {
            assert!(parse_chmod(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_chmod("999")
            .expect_err("bad")
            .contains("between 0 and 07777"));
        let symbolic = parse_chmod("u+x,go=rX").expect("valid");
        // `X` counts the execute bit the clause before just set, as chmod(1).
        assert_eq!(symbolic.apply(0o600, false), 0o755);
        assert_eq!(
            parse_chmod("go=rX").expect("valid").apply(0o600, false),
            0o644
        );
        assert_eq!(
            parse_chmod("go=rX").expect("valid").apply(0o600, true),
            0o655
        );
        assert_eq!(
            parse_chmod("a-w").expect("valid").apply(0o666, false),
            0o444
        );
        assert_eq!(parse_chmod("+x").expect("valid").apply(0o644, false), 0o755);
        assert_eq!(
            parse_chmod("g=u").expect("valid").apply(0o700, false),
            0o770
        );
        assert_eq!(
            parse_chmod("u+s").expect("valid").apply(0o755, false),
            0o4755
        );
        assert_eq!(
            parse_chmod("o+t").expect("valid").apply(0o777, true),
            0o1777
        );
    }

    #[test]
    fn exposed_ports() {
        assert_eq!(parse_exposed_port("80"), Ok(vec!["80/tcp".to_string()]));
        assert_eq!(parse_exposed_port("53/UDP"), Ok(vec!["53/udp".to_string()]));
        assert_eq!(
            parse_exposed_port("8000-8002/tcp").map(|ports| ports.len()),
            Ok(3)
        );
        assert_eq!(
            parse_exposed_port("127.0.0.1:8080:80"),
            Ok(vec!["80/tcp".to_string()])
        );
        assert_eq!(
            parse_exposed_port("[::1]:8080:80"),
            Ok(vec!["80/tcp".to_string()])
        );
        for bad in [
            "",
            "/tcp",
            "80/http",
            "70000",
            "x",
            "90-80",
            "1.2.3:80:80",
            "8000-8001:80-90",
        ] {
            assert!(parse_exposed_port(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn heredoc_markers() {
        assert_eq!(heredoc_marker_name("<<EOF").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker_name("<<-EOF").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker_name("<<\"EOF\"").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker_name("3<<'x'").as_deref(), Some("x"));
        assert_eq!(heredoc_marker_name("file"), None);
        assert_eq!(heredoc_marker_name("<<"), None);
        assert_eq!(heredoc_marker_name("<<<x"), None);
    }

    #[test]
    fn csv_like_go() {
        assert_eq!(
            split_csv("a,b=c,,d"),
            Ok(vec!["a".into(), "b=c".into(), "".into(), "d".into()])
        );
        assert_eq!(split_csv("\"a,b\",c"), Ok(vec!["a,b".into(), "c".into()]));
        assert_eq!(
            split_csv("\"say \"\"hi\"\"\""),
            Ok(vec!["say \"hi\"".into()])
        );
        assert_eq!(split_csv(""), Ok(vec![]));
        assert!(split_csv("a\"b").is_err());
        assert!(split_csv("\"ab").is_err());
        assert!(split_csv("\"a\"b").is_err());
    }
}
