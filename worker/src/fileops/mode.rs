//! `COPY --chmod`: octal modes and BSD `chmod(1)` symbolic modes (`u+x,g-w`, `a=rX`, `g=u`),
//! with the semantics BuildKit uses (its fork of dchapes/mode, parsed with a zero umask).
//!
//! A symbolic mode is a comma-separated list of clauses `[ugoa]*([-+=]([rwxXst]*|[ugo]))+`.
//! Without a who part a clause acts on all bits. `X` sets execute bits only with `+`, and only
//! when the original mode already had an execute bit or the file is a directory; `s` needs a
//! `u` or `g` who (or none), `t` likewise; `=` clears the who bits first; `u`, `g`, `o` as the
//! permission copy those bits of the mode as it is at that point.

use crate::fileops::FileOpError;
use kiln_frontend::dag::op::Chmod;

const SET_UID: u32 = 0o4000;
const SET_GID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
const USER_BITS: u32 = 0o700;
const GROUP_BITS: u32 = 0o070;
const OTHER_BITS: u32 = 0o007;
const STANDARD_BITS: u32 = SET_UID | SET_GID | USER_BITS | GROUP_BITS | OTHER_BITS;
const ALL_READ: u32 = 0o444;
const ALL_WRITE: u32 = 0o222;
const ALL_EXECUTE: u32 = 0o111;

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeSpec {
    /// Replace the permission bits (and setuid/setgid/sticky) with these.
    Octal(u32),
    /// Edit the source's mode.
    Symbolic(Vec<ModeCommand>),
}

/// One step of a symbolic mode, applied in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeCommand {
    /// Clear these bits.
    Clear(u32),
    /// Set these bits.
    Set(u32),
    /// Set these bits when the original mode had an execute bit or is a directory.
    SetExecuteIf(u32),
    /// Copy the permission triple of `from` (0 = user, 1 = group, 2 = other) onto the who bits
    /// selected by `targets` (same encoding, as a bit set `1 << n`), with `operation` `+`, `-`
    /// or `=`.
    CopyBits {
        from: u8,
        targets: u8,
        operation: u8,
    },
}

impl ModeSpec {
    /// Parses a `--chmod` value from the DAG.
    pub fn from_chmod(chmod: &Chmod) -> Result<ModeSpec, FileOpError> {
        match chmod {
            Chmod::Octal(mode) => {
                if mode & !0o7777 != 0 {
                    return Err(FileOpError::InvalidMode {
                        mode: format!("{mode:o}"),
                        reason: "octal mode has bits above 07777",
                    });
                }
                Ok(ModeSpec::Octal(*mode))
            }
            Chmod::Symbolic(text) => parse_symbolic(text),
        }
    }

    /// The permission bits of directories that the copy creates as parents of the
    /// destination (BuildKit: the octal mode's permission bits, 0755 otherwise).
    pub fn parent_directory_mode(spec: Option<&ModeSpec>) -> u32 {
        match spec {
            Some(ModeSpec::Octal(mode)) => mode & 0o777,
            _ => 0o755,
        }
    }

    /// The mode (permission and special bits) a copied entry gets, from its source `mode`
    /// (`st_mode` without the type bits) and whether it is a directory.
    pub fn apply(&self, mode: u32, is_directory: bool) -> u32 {
        match self {
            ModeSpec::Octal(octal) => octal & 0o7777,
            ModeSpec::Symbolic(commands) => apply_commands(commands, mode & 0o7777, is_directory),
        }
    }
}

/// Adds the commands of one `+`, `-` or `=` with permission bits.
fn push_operation(
    commands: &mut Vec<ModeCommand>,
    operation: u8,
    who: u32,
    clause_who: u32,
    permissions: u32,
) {
    let mask = if who == 0 { !0u32 } else { clause_who };
    match operation {
        b'-' => commands.push(ModeCommand::Clear(mask & permissions)),
        b'+' => commands.push(ModeCommand::Set(mask & permissions)),
        _ => {
            commands.push(ModeCommand::Clear(if who == 0 {
                STANDARD_BITS
            } else {
                clause_who
            }));
            commands.push(ModeCommand::Set(mask & permissions));
        }
    }
}

fn apply_commands(commands: &[ModeCommand], original: u32, is_directory: bool) -> u32 {
    let mut mode = original;
    for command in commands {
        match *command {
            ModeCommand::Clear(bits) => mode &= !bits,
            ModeCommand::Set(bits) => mode |= bits,
            ModeCommand::SetExecuteIf(bits) => {
                if original & ALL_EXECUTE != 0 || is_directory {
                    mode |= bits;
                }
            }
            ModeCommand::CopyBits {
                from,
                targets,
                operation,
            } => {
                let value = (mode >> (6 - 3 * u32::from(from))) & 0o7;
                for target in 0..3u32 {
                    if targets & (1 << target) == 0 {
                        continue;
                    }
                    let shift = 6 - 3 * target;
                    if operation == b'=' || operation == b'-' {
                        let clear = if operation == b'=' { 0o7 } else { value };
                        mode &= !(clear << shift);
                    }
                    if operation == b'=' || operation == b'+' {
                        mode |= value << shift;
                    }
                }
            }
        }
    }
    mode
}

/// Parses a symbolic mode (or an octal number written as text).
pub fn parse_symbolic(text: &str) -> Result<ModeSpec, FileOpError> {
    let invalid = |reason: &'static str| FileOpError::InvalidMode {
        mode: text.to_string(),
        reason,
    };
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(invalid("empty mode"));
    }
    if bytes[0].is_ascii_digit() {
        let value = u32::from_str_radix(text, 8).map_err(|_| invalid("bad octal number"))?;
        if value & !0o7777 != 0 {
            return Err(invalid("octal mode has bits above 07777"));
        }
        return Ok(ModeSpec::Octal(value));
    }
    let mut commands = Vec::new();
    let mut index = 0;
    loop {
        // The who part.
        let mut who = 0u32;
        let mut who_set = 0u8;
        while let Some(&byte) = bytes.get(index) {
            match byte {
                b'a' => {
                    who |= STANDARD_BITS;
                    who_set |= 0b111;
                }
                b'u' => {
                    who |= SET_UID | USER_BITS;
                    who_set |= 0b001;
                }
                b'g' => {
                    who |= SET_GID | GROUP_BITS;
                    who_set |= 0b010;
                }
                b'o' => {
                    who |= OTHER_BITS;
                    who_set |= 0b100;
                }
                _ => break,
            }
            index += 1;
        }
        // One or more operations.
        loop {
            let operation = match bytes.get(index) {
                Some(&op @ (b'+' | b'-' | b'=')) => op,
                _ => return Err(invalid("expected +, - or =")),
            };
            index += 1;
            let mut clause_who = who;
            let mut permissions = 0u32;
            let mut execute_if = false;
            let mut equal_done = false;
            // With no who, the clause acts on every bit (a zero umask).
            let targets = if who_set == 0 { 0b111 } else { who_set };
            while let Some(&byte) = bytes.get(index) {
                match byte {
                    b'r' => permissions |= ALL_READ,
                    b'w' => permissions |= ALL_WRITE,
                    b'x' => permissions |= ALL_EXECUTE,
                    b'X' => execute_if |= operation == b'+',
                    b's' => {
                        if who == 0 || who & !OTHER_BITS != 0 {
                            permissions |= SET_UID | SET_GID;
                        }
                    }
                    b't' => {
                        if who == 0 || who & !OTHER_BITS != 0 {
                            clause_who |= STICKY;
                            permissions |= STICKY;
                        }
                    }
                    b'u' | b'g' | b'o' => {
                        if permissions != 0 {
                            push_operation(&mut commands, operation, who, clause_who, permissions);
                            permissions = 0;
                        }
                        if operation == b'=' {
                            equal_done = true;
                        }
                        commands.push(ModeCommand::CopyBits {
                            from: match byte {
                                b'u' => 0,
                                b'g' => 1,
                                _ => 2,
                            },
                            targets,
                            operation,
                        });
                    }
                    _ => break,
                }
                index += 1;
            }
            if permissions != 0 || (operation == b'=' && !equal_done) {
                push_operation(&mut commands, operation, who, clause_who, permissions);
            }
            if execute_if {
                let mask = if who == 0 { !0u32 } else { clause_who };
                commands.push(ModeCommand::SetExecuteIf(mask & ALL_EXECUTE));
            }
            match bytes.get(index) {
                None => return Ok(ModeSpec::Symbolic(commands)),
                Some(b',') => {
                    index += 1;
                    break;
                }
                Some(b'+' | b'-' | b'=') => continue,
                Some(_) => return Err(invalid("unexpected character")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str, mode: u32, dir: bool) -> u32 {
        parse_symbolic(text).unwrap().apply(mode, dir)
    }

    #[test]
    fn symbolic_modes_follow_chmod() {
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("u+x,g-w", 0o664, false), 0o744);
        assert_eq!(apply("+x", 0o644, false), 0o755);
        assert_eq!(apply("a=r", 0o755, false), 0o444);
        assert_eq!(apply("=r", 0o4755, false), 0o444);
        assert_eq!(apply("go-rwx", 0o777, false), 0o700);
        assert_eq!(apply("a+X", 0o644, false), 0o644);
        assert_eq!(apply("a+X", 0o744, false), 0o755);
        assert_eq!(apply("a+X", 0o644, true), 0o755);
        assert_eq!(apply("u+s", 0o755, false), 0o4755);
        assert_eq!(apply("g+s", 0o755, false), 0o2755);
        assert_eq!(apply("o+s", 0o755, false), 0o755);
        assert_eq!(apply("+t", 0o755, true), 0o1755);
        assert_eq!(apply("g=u", 0o640, false), 0o660);
        assert_eq!(apply("o=g", 0o751, false), 0o755);
        assert_eq!(apply("u=rwx,go=rx", 0o600, false), 0o755);
        assert_eq!(apply("u+w-x", 0o555, false), 0o655);
        assert_eq!(apply("755", 0o600, false), 0o755);
    }

    #[test]
    fn bad_modes_are_errors() {
        for text in ["", "u", "u+x,", "z+x", "u+q", "8", "77777"] {
            assert!(parse_symbolic(text).is_err(), "{text}");
        }
    }
}
