//! Conformance with BuildKit's own test data (`shared/conformance/buildkit`): the parser's AST
//! dumps, the files that must fail, and the shell-word expansion and splitting tables; plus
//! every real-world Dockerfile under `shared/conformance/real-world` must parse.
//!
//! When the corpus is missing the tests say they were skipped, except under CI (`CI` set),
//! where a missing corpus fails.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};

use kiln_frontend::parser::{dump, parse};
use kiln_frontend::shell::Lexer;

fn shared_dir(name: &str) -> Option<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance")
        .join(name);
    if directory.is_dir() {
        return Some(directory);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "conformance corpus missing at {} (required under CI)",
            directory.display()
        );
    }
    eprintln!(
        "skipped: conformance corpus not found at {}",
        directory.display()
    );
    None
}

fn sorted_dirs(directory: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("reading {}: {error}", directory.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_dir())
        .collect();
    entries.sort();
    entries
}

#[test]
fn parser_testfiles_dump_like_buildkit() {
    let Some(corpus) = shared_dir("buildkit") else {
        return;
    };
    let cases = sorted_dirs(&corpus.join("parser/testfiles"));
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        let expected = std::fs::read_to_string(case.join("result")).expect("result");
        match parse("Dockerfile", &text) {
            Ok(dockerfile) => {
                let actual = dump(&dockerfile);
                if actual != expected {
                    failures.push(format!(
                        "{}:\n--- expected\n{expected}--- actual\n{actual}",
                        case.display()
                    ));
                }
            }
            Err(error) => failures.push(format!("{}: {error}", case.display())),
        }
    }
    println!(
        "parser testfiles: {}/{}",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        cases.len() >= 33,
        "expected at least 33 cases, found {}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parser_negative_testfiles_fail() {
    let Some(corpus) = shared_dir("buildkit") else {
        return;
    };
    let cases = sorted_dirs(&corpus.join("parser/testfiles-negative"));
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        match parse("Dockerfile", &text) {
            Ok(dockerfile) => {
                failures.push(format!("{} parsed: {}", case.display(), dump(&dockerfile)))
            }
            Err(error) => println!(
                "{}: {error}",
                case.file_name().unwrap_or_default().to_string_lossy()
            ),
        }
    }
    println!(
        "parser testfiles-negative: {}/{}",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(cases.len() >= 4);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shell_env_var_test() {
    let Some(corpus) = shared_dir("buildkit") else {
        return;
    };
    let table = std::fs::read_to_string(corpus.join("shell/envVarTest")).expect("envVarTest");
    let env: Vec<(String, String)> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    let lexer = Lexer::new('\\');
    let (mut total, mut failures) = (0, Vec::new());
    for (index, line) in table.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').collect();
        assert_eq!(fields.len(), 3, "line {}: {line:?}", index + 1);
        let (platform, input, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        if platform == "W" {
            continue;
        }
        total += 1;
        let actual = match lexer.process_word(input, &env) {
            Ok(processed) => processed.result,
            Err(_) => "error".to_string(),
        };
        if actual != expected {
            failures.push(format!(
                "line {}: {input:?} gave {actual:?}, expected {expected:?}",
                index + 1
            ));
        }
    }
    println!("shell envVarTest: {}/{total}", total - failures.len());
    assert!(total > 150);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shell_words_test() {
    let Some(corpus) = shared_dir("buildkit") else {
        return;
    };
    let table = std::fs::read_to_string(corpus.join("shell/wordsTest")).expect("wordsTest");
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let (mut total, mut failures) = (0, Vec::new());
    for (index, line) in table.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(assignment) = line.strip_prefix("ENV ") {
            let assignment = assignment.trim_start_matches(' ');
            let (name, value) = assignment.split_once('=').unwrap_or((assignment, ""));
            env.push((name.to_string(), value.to_string()));
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 2, "line {}: {line:?}", index + 1);
        let input = fields[0].trim();
        let expected: Vec<String> = fields[1]
            .trim_start_matches(' ')
            .split(',')
            .map(str::to_string)
            .collect();
        total += 1;
        let actual = lexer
            .process_words(input, &env)
            .unwrap_or_else(|_| vec!["error".to_string()]);
        if actual != expected {
            failures.push(format!(
                "line {}: {input:?} gave {actual:?}, expected {expected:?}",
                index + 1
            ));
        }
    }
    println!("shell wordsTest: {}/{total}", total - failures.len());
    assert!(total > 20);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn collect_dockerfiles(directory: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_dockerfiles(&path, found);
            continue;
        }
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_lowercase();
        if name == "dockerfile"
            || name.starts_with("dockerfile.")
            || name.ends_with(".dockerfile")
            || name.ends_with("dockerfile")
        {
            found.push(path);
        }
    }
}

#[test]
fn real_world_dockerfiles_parse() {
    let Some(corpus) = shared_dir("real-world") else {
        return;
    };
    let mut files = Vec::new();
    collect_dockerfiles(&corpus, &mut files);
    files.sort();
    let mut failures = Vec::new();
    let mut instructions = 0;
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        match kiln_frontend::parser::parse_bytes(&file.display().to_string(), &bytes) {
            Ok(dockerfile) => instructions += dockerfile.nodes.len(),
            Err(error) => failures.push(error.to_string()),
        }
    }
    println!(
        "real-world dockerfiles: {}/{} parsed ({instructions} instructions)",
        files.len() - failures.len(),
        files.len()
    );
    assert!(
        files.len() >= 200,
        "expected about 209 files, found {}",
        files.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
