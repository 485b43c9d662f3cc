//! `--flag` parsing for one instruction, with the rules of BuildKit's `BFlags`.
//!
//! `--name=value` for string flags, `--name` / `--name=true|false` for bool flags, repeatable
//! string-array flags (`--mount`, `--exclude`); an unknown flag is an error with a suggestion
//! among the instruction's flags, a second use of a non-array flag is an error, and `--` ends
//! the flags.

use std::collections::BTreeMap;

/// The type of a flag an instruction accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagKind {
    Bool,
    String,
    Strings,
}

/// What went wrong with a flag; `flag` is the text written (`--mout=...`), to locate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlagError {
    pub(crate) flag: String,
    pub(crate) message: String,
    pub(crate) suggestion: Option<String>,
}

/// The flags given to one instruction.
#[derive(Debug, Default)]
pub(crate) struct ParsedFlags {
    strings: BTreeMap<&'static str, String>,
    arrays: BTreeMap<&'static str, Vec<String>>,
    bools: BTreeMap<&'static str, bool>,
    /// Names of the flags used, in order of first use.
    pub(crate) used: Vec<&'static str>,
}

impl ParsedFlags {
    /// The value of a string flag, if given.
    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.strings.get(name).cloned()
    }

    /// The values of an array flag, in order.
    pub(crate) fn strings(&self, name: &str) -> Vec<String> {
        self.arrays.get(name).cloned().unwrap_or_default()
    }

    /// The value of a bool flag, if given.
    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }
}

/// Parses `given` (as written, `--name=value`) against the flags an instruction accepts.
pub(crate) fn parse_flags(
    accepted: &[(&'static str, FlagKind)],
    given: &[String],
) -> Result<ParsedFlags, FlagError> {
    let mut parsed = ParsedFlags::default();
    for flag in given {
        if flag == "--" {
            break;
        }
        let error = |message: String| FlagError {
            flag: flag.clone(),
            message,
            suggestion: None,
        };
        let Some(body) = flag.strip_prefix("--") else {
            return Err(error(format!("arg should start with -- : {flag}")));
        };
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let flag_name = || format!("--{name}");
        let Some(&(accepted_name, kind)) =
            accepted.iter().find(|(candidate, _)| *candidate == name)
        else {
            let suggestion =
                crate::error::closest(name, accepted.iter().map(|(candidate, _)| *candidate))
                    .map(|name| format!("--{name}"));
            return Err(FlagError {
                flag: flag.clone(),
                message: format!("unknown flag: {}", flag_name()),
                suggestion,
            });
        };
        let already_used = parsed.used.contains(&accepted_name);
        if already_used && kind != FlagKind::Strings {
            return Err(error(format!("duplicate flag specified: {}", flag_name())));
        }
        if !already_used {
            parsed.used.push(accepted_name);
        }
        match kind {
            FlagKind::Bool => {
                let truth = match value.map(str::to_ascii_lowercase).as_deref() {
                    None => true,
                    Some("") => {
                        return Err(error(format!("missing a value on flag: {}", flag_name())))
                    }
                    Some("true") => true,
                    Some("false") => false,
                    Some(_) => {
                        return Err(error(format!(
                            "expecting boolean value for flag {}, not: {}",
                            flag_name(),
                            value.unwrap_or_default()
                        )))
                    }
                };
                parsed.bools.insert(accepted_name, truth);
            }
            FlagKind::String => {
                let Some(value) = value else {
                    return Err(error(format!("missing a value on flag: {}", flag_name())));
                };
                parsed.strings.insert(accepted_name, value.to_string());
            }
            FlagKind::Strings => {
                let Some(value) = value else {
                    return Err(error(format!("missing a value on flag: {}", flag_name())));
                };
                parsed
                    .arrays
                    .entry(accepted_name)
                    .or_default()
                    .push(value.to_string());
            }
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPTED: &[(&str, FlagKind)] = &[
        ("from", FlagKind::String),
        ("link", FlagKind::Bool),
        ("exclude", FlagKind::Strings),
    ];

    fn parse(flags: &[&str]) -> Result<ParsedFlags, FlagError> {
        parse_flags(
            ACCEPTED,
            &flags
                .iter()
                .map(|flag| flag.to_string())
                .collect::<Vec<_>>(),
        )
    }

    fn message(flags: &[&str]) -> String {
        parse(flags)
            .map(|_| String::new())
            .unwrap_or_else(|error| error.message)
    }

    #[test]
    fn values_of_each_kind() {
        let parsed = parse(&["--from=a", "--link", "--exclude=x", "--exclude=y"]).expect("valid");
        assert_eq!(parsed.string("from").as_deref(), Some("a"));
        assert_eq!(parsed.bool("link"), Some(true));
        assert_eq!(parsed.strings("exclude"), vec!["x", "y"]);
        assert_eq!(parsed.used, vec!["from", "link", "exclude"]);
        assert_eq!(
            parse(&["--link=FALSE"]).expect("valid").bool("link"),
            Some(false)
        );
        assert_eq!(
            parse(&["--link=True"]).expect("valid").bool("link"),
            Some(true)
        );
        assert_eq!(
            parse(&["--from="])
                .expect("valid")
                .string("from")
                .as_deref(),
            Some("")
        );
        assert_eq!(
            parse(&["--from=a=b"])
                .expect("valid")
                .string("from")
                .as_deref(),
            Some("a=b")
        );
    }

    #[test]
    fn double_dash_ends_flags() {
        assert!(parse(&["--link", "--", "--bogus"]).is_ok());
    }

    #[test]
    fn errors() {
        assert_eq!(
            message(&["--link=yes"]),
            "expecting boolean value for flag --link, not: yes"
        );
        assert_eq!(message(&["--link="]), "missing a value on flag: --link");
        assert_eq!(message(&["--from"]), "missing a value on flag: --from");
        assert_eq!(
            message(&["--exclude"]),
            "missing a value on flag: --exclude"
        );
        assert_eq!(
            message(&["--from=a", "--from=b"]),
            "duplicate flag specified: --from"
        );
        assert_eq!(
            message(&["--link", "--link"]),
            "duplicate flag specified: --link"
        );
        assert_eq!(message(&["-from=a"]), "arg should start with -- : -from=a");
        let unknown = parse(&["--fromm=a"]).expect_err("unknown flag");
        assert_eq!(unknown.message, "unknown flag: --fromm");
        assert_eq!(unknown.suggestion.as_deref(), Some("--from"));
        assert_eq!(unknown.flag, "--fromm=a");
        assert_eq!(
            parse(&["--zzzzzzzz"]).expect_err("unknown").suggestion,
            None
        );
    }
}
