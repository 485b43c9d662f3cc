//! The end-to-end build corpus: every `testdata/build/<case>/` is built with the real `kiln`
//! binary against a loopback registry holding `busybox`, and its `expect` file is checked by
//! running the image with `kiln run --rm` and reading its config from the store. The format
//! is described in `testdata/build/README.md`; cases listed in `testdata/build/known-bugs`
//! are run too and reported, but do not fail the test (they must still fail: a known bug that
//! passes is reported so the list stays true).
//!
//! `KILN_E2E_CASE=<substring>` runs only matching cases; `KILN_E2E_JOBS=<n>` sets how many
//! cases build at once (default 2).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_testsupport::{HttpResponse, HttpServer};
use support::{describe, Registry, Root};

/// One `run` and what its output must be.
#[derive(Debug, Default)]
struct RunCheck {
    /// `sh -c` script (image entrypoint replaced) or, for `run-image`, arguments to the
    /// image's own entrypoint.
    script: Option<String>,
    image_args: Vec<String>,
    user: Option<String>,
    stdout_lines: Vec<String>,
    stdout_contains: Vec<String>,
    stderr_contains: Vec<String>,
    exit: i32,
}

#[derive(Debug)]
enum Check {
    Run(RunCheck),
    File {
        path: String,
        fields: BTreeMap<String, String>,
    },
    Absent(String),
    Config {
        pointer: String,
        value: Option<serde_json::Value>,
    },
    Layers(usize),
}

/// A parsed `expect` file.
#[derive(Debug, Default)]
struct Expect {
    build_args: Vec<String>,
    build_flags: Vec<String>,
    build_env: Vec<(String, String)>,
    target: Option<String>,
    secrets: Vec<String>,
    serve: Vec<(String, String)>,
    build_fails: Option<String>,
    build_stderr: Vec<String>,
    build_stderr_lacks: Vec<String>,
    checks: Vec<Check>,
    /// Also check the image after `kiln save` and `kiln load` into a fresh store.
    reload: bool,
}

fn parse_expect(text: &str) -> Result<Expect, String> {
    let mut expect = Expect::default();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected `key: value`", number + 1))?;
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        fn last_run<'a>(
            expect: &'a mut Expect,
            key: &str,
            number: usize,
        ) -> Result<&'a mut RunCheck, String> {
            match expect.checks.last_mut() {
                Some(Check::Run(run)) => Ok(run),
                _ => Err(format!("line {}: `{key}:` must follow a run", number + 1)),
            }
        }
        match key.trim() {
            "build-arg" => expect.build_args.push(value),
            "build-flag" => expect.build_flags.push(value),
            "build-env" => {
                let (name, content) = value
                    .split_once('=')
                    .ok_or_else(|| format!("line {}: build-env: NAME=VALUE", number + 1))?;
                expect.build_env.push((name.into(), content.into()));
            }
            "target" => expect.target = Some(value),
            "secret" => expect.secrets.push(value),
            "serve" => {
                let (path, file) = value
                    .split_once(' ')
                    .ok_or_else(|| format!("line {}: serve: /PATH FILE", number + 1))?;
                expect.serve.push((path.into(), file.trim().into()));
            }
            "build-fails" => expect.build_fails = Some(value),
            "build-stderr" => expect.build_stderr.push(value),
            "build-stderr-lacks" => expect.build_stderr_lacks.push(value),
            "reload" => expect.reload = value.trim() == "true",
            "run" => expect.checks.push(Check::Run(RunCheck {
                script: Some(value),
                ..RunCheck::default()
            })),
            "run-image" => expect.checks.push(Check::Run(RunCheck {
                image_args: value.split_whitespace().map(str::to_string).collect(),
                ..RunCheck::default()
            })),
            "user" => last_run(&mut expect, key, number)?.user = Some(value),
            "stdout" => last_run(&mut expect, key, number)?
                .stdout_lines
                .push(unescape(&value)),
            "stdout-contains" => last_run(&mut expect, key, number)?
                .stdout_contains
                .push(unescape(&value)),
            "stderr-contains" => last_run(&mut expect, key, number)?
                .stderr_contains
                .push(unescape(&value)),
            "exit" => {
                last_run(&mut expect, key, number)?.exit = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("line {}: exit: N", number + 1))?
            }
            "file" => {
                // A path with spaces is written in double quotes.
                let (path, rest) = match value.strip_prefix('"').and_then(|v| v.split_once('"')) {
                    Some((path, rest)) => (path, rest),
                    None => value.split_once(' ').unwrap_or((value.as_str(), "")),
                };
                let mut fields = BTreeMap::new();
                let mut rest = rest.trim_start();
                while !rest.is_empty() {
                    if let Some(content) = rest.strip_prefix("content=") {
                        fields.insert("content".to_string(), unescape(content));
                        break;
                    }
                    let (field, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    let (name, content) = field.split_once('=').ok_or_else(|| {
                        format!(
                            "line {}: file field {field:?} is not name=value",
                            number + 1
                        )
                    })?;
                    fields.insert(name.to_string(), content.to_string());
                    rest = tail.trim_start();
                }
                expect.checks.push(Check::File {
                    path: path.to_string(),
                    fields,
                });
            }
            "absent" => expect.checks.push(Check::Absent(value)),
            "config" => {
                let (pointer, json) = value
                    .split_once(" = ")
                    .ok_or_else(|| format!("line {}: config: POINTER = JSON", number + 1))?;
                let json = serde_json::from_str(json.trim())
                    .map_err(|error| format!("line {}: bad JSON: {error}", number + 1))?;
                expect.checks.push(Check::Config {
                    pointer: pointer.trim().to_string(),
                    value: Some(json),
                });
            }
            "layers" => expect.checks.push(Check::Layers(
                value
                    .trim()
                    .parse()
                    .map_err(|_| format!("line {}: layers: N", number + 1))?,
            )),
            "config-absent" => expect.checks.push(Check::Config {
                pointer: value.trim().to_string(),
                value: None,
            }),
            other => return Err(format!("line {}: unknown key {other:?}", number + 1)),
        }
    }
    Ok(expect)
}

/// `\n` and `\t` escapes (the expect format is one line per item).
fn unescape(text: &str) -> String {
    text.replace("\\n", "\n").replace("\\t", "\t")
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/build")
}

/// `case: reason` lines of `testdata/build/known-bugs`.
fn known_bugs() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(corpus_dir().join("known-bugs")).unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(case, reason)| (case.trim().to_string(), reason.trim().to_string()))
        .collect()
}

/// Builds and checks one case; `Err` lists what went wrong.
fn run_case(registry: &Registry, name: &str, dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(dir.join("expect"))
        .map_err(|error| format!("reading expect: {error}"))?;
    let expect = parse_expect(&text)?;
    let root = Root::new();
    let tag = format!("e2e-{name}:latest");

    let _server = if expect.serve.is_empty() {
        None
    } else {
        let mut files = BTreeMap::new();
        for (path, file) in &expect.serve {
            let bytes =
                std::fs::read(dir.join(file)).map_err(|error| format!("serve {file}: {error}"))?;
            files.insert(path.clone(), bytes);
        }
        let files = Arc::new(files);
        Some(
            HttpServer::start("127.0.0.1", move |request| {
                match files.get(request.path()) {
                    Some(bytes) => HttpResponse::new(200).body(bytes.clone()).into(),
                    None => HttpResponse::new(404).into(),
                }
            })
            .map_err(|error| format!("starting the HTTP server: {error}"))?,
        )
    };

    let mut args: Vec<String> = vec![
        "--progress".into(),
        "plain".into(),
        "-t".into(),
        tag.clone(),
        "--build-arg".into(),
        format!("REGISTRY={}", registry.address()),
    ];
    if let Some(server) = &_server {
        args.push("--build-arg".into());
        args.push(format!("HTTP={}", server.address()));
    }
    for build_arg in &expect.build_args {
        args.push("--build-arg".into());
        args.push(build_arg.clone());
    }
    if let Some(target) = &expect.target {
        args.push("--target".into());
        args.push(target.clone());
    }
    for secret in &expect.secrets {
        // src= paths are relative to the case directory.
        let secret = match secret.split_once("src=") {
            Some((head, file)) => format!("{head}src={}", dir.join(file).display()),
            None => secret.clone(),
        };
        args.push("--secret".into());
        args.push(secret);
    }
    args.extend(expect.build_flags.iter().cloned());
    // `@REGISTRY@` / `@HTTP@` (for places where BuildKit allows no variables, like
    // `COPY --from`): the Dockerfile is rewritten into a temp dir and passed with -f.
    let dockerfile_text = std::fs::read_to_string(dir.join("Dockerfile")).unwrap_or_default();
    let _rewritten = if dockerfile_text.contains("@REGISTRY@") || dockerfile_text.contains("@HTTP@")
    {
        let temp = tempfile::tempdir().map_err(|error| format!("temp dir: {error}"))?;
        let mut text = dockerfile_text.replace("@REGISTRY@", registry.address());
        if let Some(server) = &_server {
            text = text.replace("@HTTP@", &server.address());
        }
        let path = temp.path().join("Dockerfile");
        std::fs::write(&path, text).map_err(|error| format!("writing Dockerfile: {error}"))?;
        args.push("-f".into());
        args.push(path.to_string_lossy().into_owned());
        Some(temp)
    } else {
        None
    };
    args.push(dir.to_string_lossy().into_owned());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = root.command("build", &arg_refs);
    for (name, value) in &expect.build_env {
        command.env(name, value);
    }
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| format!("running kiln build: {error}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut problems = Vec::new();
    match (&expect.build_fails, output.status.success()) {
        (None, false) => {
            return Err(format!("build failed:\n{}", tail(&stderr, 40)));
        }
        (Some(text), true) => {
            return Err(format!(
                "build succeeded, expected a failure with {text:?}:\n{}",
                tail(&stderr, 20)
            ));
        }
        (Some(text), false) => {
            if !stderr.contains(text.as_str()) {
                problems.push(format!(
                    "build error lacks {text:?}:\n{}",
                    tail(&stderr, 20)
                ));
            }
        }
        (None, true) => {}
    }
    for text in &expect.build_stderr {
        if !stderr.contains(text.as_str()) {
            problems.push(format!(
                "build output lacks {text:?}:\n{}",
                tail(&stderr, 30)
            ));
        }
    }
    for text in &expect.build_stderr_lacks {
        if stderr.contains(text.as_str()) {
            problems.push(format!("build output has {text:?}:\n{}", tail(&stderr, 30)));
        }
    }
    if !root.mounts().is_empty() {
        problems.push(format!("mounts left after the build: {:?}", root.mounts()));
    }
    if expect.build_fails.is_none() {
        if let Err(problem) = check_history(&root, &tag) {
            problems.push(problem);
        }
        for check in &expect.checks {
            if let Err(problem) = run_check(&root, &tag, check) {
                problems.push(problem);
            }
        }
        if !root.mounts().is_empty() {
            problems.push(format!("mounts left after kiln run: {:?}", root.mounts()));
        }
        // The same build again runs nothing and names the same image.
        let image_id = root.image_digest(&tag);
        args[1] = "json".into();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = root.command("build", &arg_refs);
        for (name, value) in &expect.build_env {
            command.env(name, value);
        }
        let output = command
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|error| format!("running kiln build: {error}"))?;
        let rebuild = support::Build::from_output(output);
        if !rebuild.success {
            problems.push(format!("the rebuild failed:\n{}", rebuild.human_stderr()));
        } else {
            let ran = rebuild.ran_instructions();
            if !ran.is_empty() {
                problems.push(format!("the rebuild ran {ran:?} again"));
            }
            let rebuilt_id = root.image_digest(&tag);
            if rebuilt_id != image_id {
                problems.push(format!(
                    "the rebuild made another image: {rebuilt_id}, first {image_id}"
                ));
            }
        }
        if expect.reload {
            if let Err(problem) = reload_and_check(&root, &tag, &expect.checks) {
                problems.push(problem);
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Docker's invariant: one non-empty history entry per layer.
fn check_history(root: &Root, tag: &str) -> Result<(), String> {
    let config = root.image_config(tag);
    let layers = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    let history = config["history"].as_array().cloned().unwrap_or_default();
    let non_empty = history
        .iter()
        .filter(|entry| entry["empty_layer"] != serde_json::Value::Bool(true))
        .count();
    if non_empty == layers {
        Ok(())
    } else {
        Err(format!(
            "{layers} layers but {non_empty} non-empty history entries: {}",
            serde_json::to_string_pretty(&history).unwrap_or_default()
        ))
    }
}

/// `kiln save` the image, `kiln load` it into a fresh store, and run the checks there: the
/// exported layers (not the build's snapshots) must hold the same files.
fn reload_and_check(root: &Root, tag: &str, checks: &[Check]) -> Result<(), String> {
    let archive_dir = tempfile::tempdir().map_err(|error| format!("temp dir: {error}"))?;
    let archive = archive_dir.path().join("image.tar");
    let archive_text = archive.to_string_lossy().into_owned();
    let saved = root.kiln("save", &["-o", &archive_text, tag]);
    if !saved.status.success() {
        return Err(format!("kiln save failed:\n{}", describe(&saved)));
    }
    let fresh = Root::new();
    let loaded = fresh.kiln("load", &["-i", &archive_text]);
    if !loaded.status.success() {
        return Err(format!("kiln load failed:\n{}", describe(&loaded)));
    }
    let mut problems = Vec::new();
    for check in checks {
        if let Err(problem) = run_check(&fresh, tag, check) {
            problems.push(format!("after save and load: {problem}"));
        }
    }
    if !fresh.mounts().is_empty() {
        problems.push(format!(
            "mounts left in the loading store: {:?}",
            fresh.mounts()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run_check(root: &Root, tag: &str, check: &Check) -> Result<(), String> {
    match check {
        Check::Run(run) => {
            let mut args: Vec<&str> = vec!["--rm"];
            if let Some(user) = &run.user {
                args.extend(["--user", user]);
            }
            match &run.script {
                Some(script) => args.extend(["--entrypoint", "/bin/sh", tag, "-c", script]),
                None => {
                    args.push(tag);
                    args.extend(run.image_args.iter().map(String::as_str));
                }
            }
            let output = root.kiln("run", &args);
            let what = run
                .script
                .clone()
                .unwrap_or_else(|| format!("image {:?}", run.image_args));
            let code = output.status.code().unwrap_or(-1);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if code != run.exit {
                return Err(format!(
                    "run {what:?}: exit {code}, expected {}\n{}",
                    run.exit,
                    describe(&output)
                ));
            }
            if !run.stdout_lines.is_empty() {
                let expected = run.stdout_lines.join("\n");
                if stdout.trim_end_matches('\n') != expected {
                    return Err(format!(
                        "run {what:?}: stdout\n{stdout}\nexpected\n{expected}\nstderr:\n{stderr}"
                    ));
                }
            }
            for text in &run.stdout_contains {
                if !stdout.contains(text.as_str()) {
                    return Err(format!("run {what:?}: stdout lacks {text:?}:\n{stdout}"));
                }
            }
            for text in &run.stderr_contains {
                if !stderr.contains(text.as_str()) {
                    return Err(format!("run {what:?}: stderr lacks {text:?}:\n{stderr}"));
                }
            }
            Ok(())
        }
        Check::File { path, fields } => {
            let script = r#"stat -c '%F|%a|%u|%g' "$1" || exit 3; if [ -L "$1" ]; then readlink "$1"; elif [ -f "$1" ]; then cat "$1"; fi"#;
            let output = root.kiln(
                "run",
                &[
                    "--rm",
                    "--user",
                    "0",
                    "--entrypoint",
                    "/bin/sh",
                    tag,
                    "-c",
                    script,
                    "stat",
                    path,
                ],
            );
            if !output.status.success() {
                return Err(format!("file {path}: cannot stat\n{}", describe(&output)));
            }
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let (stat_line, body) = stdout.split_once('\n').unwrap_or((&stdout, ""));
            let parts: Vec<&str> = stat_line.split('|').collect();
            let [kind, mode, uid, gid] = parts[..] else {
                return Err(format!("file {path}: odd stat output {stat_line:?}"));
            };
            let kind = match kind {
                "regular file" | "regular empty file" => "file",
                "directory" => "dir",
                "symbolic link" => "symlink",
                "fifo" => "fifo",
                other => other,
            };
            let mut problems = Vec::new();
            for (field, wanted) in fields {
                let got = match field.as_str() {
                    "type" => kind.to_string(),
                    "mode" => {
                        let parsed = u32::from_str_radix(mode, 8).unwrap_or(u32::MAX);
                        let wanted = u32::from_str_radix(wanted, 8).unwrap_or(u32::MAX - 1);
                        if parsed == wanted {
                            continue;
                        }
                        format!("{parsed:04o}")
                    }
                    "uid" => uid.to_string(),
                    "gid" => gid.to_string(),
                    "content" | "target" => {
                        let body = if field == "target" {
                            body.trim_end_matches('\n')
                        } else {
                            body
                        };
                        body.to_string()
                    }
                    other => return Err(format!("file {path}: unknown field {other}")),
                };
                if &got != wanted {
                    problems.push(format!(
                        "file {path}: {field} is {got:?}, expected {wanted:?}"
                    ));
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("\n"))
            }
        }
        Check::Absent(path) => {
            let output = root.kiln(
                "run",
                &[
                    "--rm",
                    "--user",
                    "0",
                    "--entrypoint",
                    "/bin/sh",
                    tag,
                    "-c",
                    r#"if [ -e "$1" ] || [ -L "$1" ]; then ls -la "$1"; exit 1; fi"#,
                    "absent",
                    path,
                ],
            );
            if output.status.success() {
                Ok(())
            } else {
                Err(format!("{path} exists:\n{}", describe(&output)))
            }
        }
        Check::Layers(wanted) => {
            let config = root.image_config(tag);
            let count = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
            if count == *wanted {
                Ok(())
            } else {
                Err(format!("the image has {count} layers, expected {wanted}"))
            }
        }
        Check::Config { pointer, value } => {
            let config = root.image_config(tag);
            let got = config.pointer(pointer).filter(|value| !value.is_null());
            match (got, value) {
                (None, None) => Ok(()),
                (Some(got), Some(wanted)) if got == wanted => Ok(()),
                (got, wanted) => Err(format!(
                    "config {pointer}: {} expected {}\nconfig: {}",
                    got.map_or("absent".into(), |v| v.to_string()),
                    wanted.as_ref().map_or("absent".into(), |v| v.to_string()),
                    serde_json::to_string_pretty(&config["config"]).unwrap_or_default()
                )),
            }
        }
    }
}

#[test]
fn corpus() {
    let filter = std::env::var("KILN_E2E_CASE").ok();
    let jobs: usize = std::env::var("KILN_E2E_JOBS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2)
        .max(1);
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(corpus_dir())
        .expect("reading testdata/build")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("expect").is_file())
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            )
        })
        .filter(|(name, _)| filter.as_deref().is_none_or(|wanted| name.contains(wanted)))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases matched");
    let known = known_bugs();
    for name in known.keys() {
        assert!(
            corpus_dir().join(name).join("expect").is_file(),
            "known-bugs names {name}, which is not a case"
        );
    }

    let registry = Registry::with_busybox();
    let queue = Mutex::new(cases.clone());
    let results: Mutex<BTreeMap<String, (Result<(), String>, f64)>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let Some((name, dir)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let started = std::time::Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_case(&registry, &name, &dir)
                }))
                .unwrap_or_else(|panic| {
                    Err(format!(
                        "panicked: {}",
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    ))
                });
                let seconds = started.elapsed().as_secs_f64();
                results.lock().unwrap().insert(name, (result, seconds));
            });
        }
    });

    let results = results.into_inner().unwrap();
    let mut failures = Vec::new();
    let mut fixed = Vec::new();
    let mut summary = String::new();
    for (name, (result, seconds)) in &results {
        let status = match (result, known.get(name)) {
            (Ok(()), None) => "ok".to_string(),
            (Ok(()), Some(_)) => {
                fixed.push(name.clone());
                "ok (listed in known-bugs: remove it)".to_string()
            }
            (Err(_), Some(reason)) => format!("KNOWN BUG: {reason}"),
            (Err(problem), None) => {
                failures.push(format!("--- {name}:\n{problem}"));
                "FAILED".to_string()
            }
        };
        summary.push_str(&format!("{name:40} {seconds:6.2}s  {status}\n"));
    }
    for (name, (result, _)) in &results {
        if let (Err(problem), Some(_)) = (result, known.get(name)) {
            summary.push_str(&format!("--- known bug {name}:\n{problem}\n"));
        }
    }
    eprintln!("{summary}");
    eprintln!(
        "{} cases: {} passed, {} known bugs, {} failed",
        results.len(),
        results.len() - failures.len() - known.keys().filter(|k| results.contains_key(*k)).count()
            + fixed.len(),
        known.keys().filter(|k| results.contains_key(*k)).count() - fixed.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        fixed.is_empty(),
        "known bugs now pass, remove them from testdata/build/known-bugs: {fixed:?}"
    );
}
