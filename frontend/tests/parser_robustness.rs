//! Nothing the parser or the word lexer is given makes them panic or hang: random text, mutated
//! corpus files, HOSTILE-INPUTS.md section D (every instruction with odd arguments), and inputs
//! built to exhaust the stack or the time (deep nesting, huge lines, many continuations).
//!
//! A seeded generator keeps the run reproducible and bounded (a few seconds in a debug build).

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_frontend::parser::{self, dump, parse, KNOWN_INSTRUCTIONS};
use kiln_frontend::shell::{LexErrorKind, Lexer};

/// xorshift64*: small, seeded, good enough to pick characters.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const PIECES: &[&str] = &[
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "ARG",
    "LABEL",
    "CMD",
    "ONBUILD",
    "HEALTHCHECK",
    "SHELL",
    "EXPOSE",
    "VOLUME",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\\",
    "`",
    "\\\n",
    "`\n",
    "#",
    "# escape=`\n",
    "# syntax=x\n",
    "\"",
    "'",
    "[",
    "]",
    ",",
    "{",
    "}",
    "$",
    "${",
    ":-",
    ":+",
    ":?",
    "#",
    "%%",
    "//",
    "/",
    "*",
    "?",
    "<<",
    "<<-",
    "EOF",
    "\nEOF\n",
    "3<<",
    "--",
    "--mount=type=cache",
    "=",
    "a",
    "b=c",
    "é",
    "한",
    "\u{a0}",
    "\u{85}",
    "\u{feff}",
    "\0",
    "\u{b}",
    "\u{c}",
    "\u{2028}",
    "😀",
    "\\u0000",
    "null",
    "1",
    "[[",
    "]]",
    "NONE",
    "CMD",
];

fn random_text(random: &mut Random, pieces: usize) -> String {
    let count = random.below(pieces);
    let mut text = String::new();
    for _ in 0..count {
        if random.below(10) == 0 {
            // Any character at all, now and then.
            let code = random.below(0x11_0000) as u32;
            text.push(char::from_u32(code).unwrap_or('\u{fffd}'));
        } else {
            text.push_str(random.pick(PIECES));
        }
    }
    text
}

/// Parses and, when that worked, dumps: the two public entry points.
fn exercise_parser(text: &str) {
    if let Ok(dockerfile) = parse("Dockerfile", text) {
        let _ = dump(&dockerfile);
    }
}

fn lexers() -> Vec<Lexer> {
    let mut lexers = Vec::new();
    for escape in ['\\', '`'] {
        for flags in 0..16u8 {
            lexers.push(Lexer {
                raw_quotes: flags & 1 != 0,
                raw_escapes: flags & 2 != 0,
                skip_process_quotes: flags & 4 != 0,
                skip_unset_env: flags & 8 != 0,
                ..Lexer::new(escape)
            });
        }
    }
    lexers
}

fn environment() -> Vec<(String, String)> {
    [
        ("a", "x/y*z"),
        ("b", ""),
        ("c", "two  words"),
        ("é", "accent"),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}

#[test]
fn random_text_never_panics() {
    let mut random = Random(0x5eed_0001);
    let lexers = lexers();
    let environment = environment();
    for round in 0..2_000 {
        let text = random_text(&mut random, 40);
        exercise_parser(&text);
        let lexer = &lexers[round % lexers.len()];
        let _ = lexer.process_word(&text, &environment);
    }
}

#[test]
fn mutated_corpus_files_never_panic() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/buildkit/parser/testfiles");
    let mut originals: Vec<String> = std::fs::read_dir(&corpus)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| std::fs::read_to_string(entry.path().join("Dockerfile")).ok())
                .collect()
        })
        .unwrap_or_default();
    // Without the corpus, mutate a few files of our own.
    originals.push(
        "# escape=`\nFROM a AS b\nRUN <<EOF\n  x `\nEOF\nCOPY --from=b [\"a\", \"b\"] /c\n"
            .to_string(),
    );
    originals.push(
        "FROM a\nENV A=1 B=\"2 3\" \\\n  C=${A:-x}\nHEALTHCHECK --interval=1s CMD [\"a\"]\n"
            .to_string(),
    );
    let mut random = Random(0x5eed_0002);
    let started = Instant::now();
    for round in 0..2_000 {
        let original = &originals[round % originals.len()];
        let mut characters: Vec<char> = original.chars().collect();
        for _ in 0..1 + random.below(6) {
            let position = random.below(characters.len() + 1);
            match random.below(4) {
                0 if position < characters.len() => {
                    characters.remove(position);
                }
                1 if position < characters.len() => {
                    let replacement = random.pick(PIECES).chars().next().unwrap_or('x');
                    characters[position] = replacement;
                }
                _ => {
                    let insertion: Vec<char> = random.pick(PIECES).chars().collect();
                    characters.splice(position..position, insertion);
                }
            }
        }
        let text: String = characters.into_iter().collect();
        exercise_parser(&text);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "mutations took {:?}",
        started.elapsed()
    );
}

#[test]
fn every_instruction_with_odd_arguments_answers() {
    // HOSTILE-INPUTS.md D: each instruction with `foo=bar`, `a`, `a b`, `a b c`, `0 0` (and a few
    // more) gives an answer or an error, never a panic.
    let arguments = [
        "", "foo=bar", "a", "a b", "a b c", "0 0", "[\"a\"]", "[1]", "[", "--x", "-- a", "NONE",
        "CMD", "\\",
    ];
    let mut keywords: Vec<String> = KNOWN_INSTRUCTIONS
        .iter()
        .map(|keyword| keyword.to_string())
        .collect();
    keywords.extend(
        KNOWN_INSTRUCTIONS
            .iter()
            .map(|keyword| format!("ONBUILD {keyword}")),
    );
    keywords.extend(
        [
            "RUNN",
            "onbuild onbuild",
            "HEALTHCHECK CMD",
            "HEALTHCHECK --interval=1s",
        ]
        .map(String::from),
    );
    for keyword in &keywords {
        for argument in arguments {
            for text in [
                format!("{keyword} {argument}\n"),
                format!("FROM x\n{keyword} {argument}"),
            ] {
                match parse("Dockerfile", &text) {
                    Ok(dockerfile) => assert!(!dump(&dockerfile).is_empty()),
                    Err(error) => {
                        assert_eq!(error.location.file, "Dockerfile");
                        assert!(error.location.line > 0, "{text:?}: {error}");
                    }
                }
            }
        }
    }
}

/// Runs `check` on a thread with a small stack, to prove depth is bounded.
fn on_small_stack(check: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(check)
        .expect("spawn")
        .join()
        .expect("no stack overflow");
}

#[test]
fn deep_nesting_is_bounded() {
    on_small_stack(|| {
        // `${a:-${a:-...}}`, nested far past the limit, in a word and inside double quotes.
        let depth = 5_000;
        let word = format!("{}x{}", "${a:-".repeat(depth), "}".repeat(depth));
        let error = Lexer::new('\\')
            .process_word(&word, &environment())
            .unwrap_err();
        assert!(
            matches!(error.kind, LexErrorKind::NestedTooDeep { .. }),
            "{error}"
        );
        let quoted = format!("{}x{}", "\"${a:-".repeat(depth), "}\"".repeat(depth));
        assert!(Lexer::new('\\')
            .process_word(&quoted, &environment())
            .is_err());
        // Within the limit it works.
        let fine = format!("{}x{}", "${zz:-".repeat(60), "}".repeat(60));
        assert_eq!(
            Lexer::new('\\')
                .process_word(&fine, &environment())
                .unwrap()
                .result,
            "x"
        );
        // Deep JSON and long ONBUILD chains, joined from continuation lines past 64 KiB.
        // Past Go's nesting limit (10 000) the text is not JSON, so it is the shell form; below
        // it, nested arrays are an error.
        let json = format!(
            "FROM a\nCMD [{}{}]\n",
            "[".repeat(30_000),
            "]".repeat(30_000)
        );
        assert!(!parse("Dockerfile", &json).expect("shell form").nodes[1].json_form);
        let json = format!("FROM a\nCMD [{}{}]\n", "[".repeat(9_000), "]".repeat(9_000));
        assert!(
            parse("Dockerfile", &json).is_err(),
            "nested JSON arrays are an error"
        );
        let chain = format!("FROM a\n{}RUN x\n", "ONBUILD \\\n".repeat(20_000));
        assert!(parse("Dockerfile", &chain).is_err());
    });
}

#[test]
fn large_inputs_stay_fast() {
    let started = Instant::now();
    // 30 000 continuation lines joined into one instruction.
    let continued = format!("FROM a\nRUN {}true\n", "echo x && \\\n".repeat(30_000));
    let dockerfile = parse("Dockerfile", &continued).expect("parses");
    assert_eq!(dockerfile.nodes[1].end_line, 30_002);
    // 2 000 heredocs on one line.
    let heredocs = format!(
        "FROM a\nCOPY {} /d/\n{}",
        "<<E ".repeat(2_000),
        "x\nE\n".repeat(2_000)
    );
    assert_eq!(
        parse("Dockerfile", &heredocs).expect("parses").nodes[1]
            .heredocs
            .len(),
        2_000
    );
    // Patterns and values at the size of the longest line.
    let environment = vec![("v".to_string(), "ab".repeat(5_000))];
    let lexer = Lexer::new('\\');
    for pattern in ["*a*b*", "a", "", "?", "*"] {
        for operator in ["#", "##", "%", "%%", "/", "//"] {
            let word = if operator.starts_with('/') {
                format!("${{v{operator}{pattern}/X}}")
            } else {
                format!("${{v{operator}{pattern}}}")
            };
            // `${v//X}` reads as replace-all with no closing `/`: an error, as in BuildKit.
            let expanded = lexer.process_word(&word, &environment);
            assert_eq!(expanded.is_err(), word == "${v//X}", "{word}: {expanded:?}");
        }
    }
    let stars = format!("${{v%%{}}}", "*".repeat(3_000));
    let _ = lexer.process_word(&stars, &environment);
    // A line at the limit, full of quotes and escapes.
    let line = format!("FROM a\nENV {}\n", "a=\"\\\" b\" ".repeat(6_500));
    let _ = parse("Dockerfile", &line);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "large inputs took {:?}",
        started.elapsed()
    );
}

#[test]
fn parse_bytes_accepts_any_bytes() {
    let mut random = Random(0x5eed_0003);
    for _ in 0..2_000 {
        let length = random.below(64);
        let bytes: Vec<u8> = (0..length).map(|_| random.below(256) as u8).collect();
        let _ = parser::parse_bytes("Dockerfile", &bytes);
    }
}
