//! Data-driven conversion tests: `testdata/frontend/<case>/Dockerfile` (+ optional `args`
//! with `K=V` lines, `target`, `platform`, `dockerignore`) beside `expected.txt` (the text DAG
//! dump and stage configs, or `error: ...`). A missing expected file is written;
//! `UPDATE_EXPECT=1` rewrites them all.

use std::path::{Path, PathBuf};

use kiln_frontend::convert::{convert, render_result, ConvertOptions};
use kiln_frontend::dag::PrintFormat;
use kiln_frontend::resolver::MapResolver;
use kiln_types::{Digest, ImageConfig, ImageSpec, Platform, RootFs};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/frontend")
}

/// The base images the cases may use: configs with ENV, WORKDIR, USER and ONBUILD.
pub fn fake_resolver() -> MapResolver {
    let image =
        |env: &[&str], workdir: Option<&str>, user: Option<&str>, onbuild: &[&str]| ImageSpec {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: ImageConfig {
                env: Some(env.iter().map(|s| s.to_string()).collect()),
                working_dir: workdir.map(str::to_string),
                user: user.map(str::to_string),
                on_build: (!onbuild.is_empty())
                    .then(|| onbuild.iter().map(|s| s.to_string()).collect()),
                cmd: Some(vec!["/bin/sh".into()]),
                ..ImageConfig::default()
            },
            rootfs: RootFs::layers(vec![Digest::of_bytes(b"a layer")]),
            ..ImageSpec::default()
        };
    MapResolver::new()
        .with(
            "alpine",
            image(
                &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                None,
                None,
                &[],
            ),
        )
        .with(
            "alpine:3.20",
            image(
                &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                None,
                None,
                &[],
            ),
        )
        .with(
            "golang:1.22",
            image(
                &[
                    "PATH=/go/bin:/usr/local/go/bin:/usr/bin:/bin",
                    "GOPATH=/go",
                    "GOLANG_VERSION=1.22.0",
                ],
                Some("/go"),
                None,
                &[],
            ),
        )
        .with(
            "example/app-user",
            image(&["PATH=/usr/bin:/bin"], Some("/home/app"), Some("app"), &[]),
        )
        .with("example/config-only", {
            // No layers: the stage starts from scratch with this config.
            let mut config_only = image(&["PATH=/bin", "MODE=empty"], Some("/srv"), None, &[]);
            config_only.rootfs = RootFs::layers(Vec::new());
            config_only
        })
        .with(
            "example/onbuild",
            image(
                &["PATH=/usr/bin:/bin"],
                Some("/app"),
                None,
                &["COPY . /app/src", "RUN make -C /app/src", "ENV BUILT=1"],
            ),
        )
}

fn read_optional(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

/// Converts a case and compares with (or writes) its expected dump.
pub fn check(case: &str) {
    let dir = cases_dir().join(case);
    let text = std::fs::read_to_string(dir.join("Dockerfile"))
        .unwrap_or_else(|error| panic!("{case}: {error}"));
    let resolver = fake_resolver();
    let mut options = ConvertOptions::new(&resolver);
    options.build_platform = Some(Platform::parse("linux/amd64").unwrap());
    if let Some(args) = read_optional(&dir, "args") {
        for line in args.lines().filter(|line| !line.trim().is_empty()) {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            options
                .build_args
                .insert(key.to_string(), value.to_string());
        }
    }
    options.target = read_optional(&dir, "target").map(|t| t.trim().to_string());
    options.target_platform =
        read_optional(&dir, "platform").map(|p| Platform::parse(p.trim()).unwrap());
    if let Some(ignore) = read_optional(&dir, "dockerignore") {
        options.dockerignore = ignore
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
    }
    let actual = match convert(&text, "Dockerfile", &options) {
        Ok(result) => render_result(&result, PrintFormat::Text),
        Err(error) => format!("error: {error}\n"),
    };
    let expected_path = dir.join("expected.txt");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    match std::fs::read_to_string(&expected_path) {
        Ok(expected) if !update => {
            if expected != actual {
                panic!("{case}: output differs from expected.txt (UPDATE_EXPECT=1 to accept)\n--- expected\n{expected}\n--- actual\n{actual}");
            }
        }
        _ => std::fs::write(&expected_path, &actual).unwrap(),
    }
}

#[test]
fn all_cases() {
    let mut cases: Vec<String> = std::fs::read_dir(cases_dir())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Dockerfile").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(panic) = std::panic::catch_unwind(|| check(case)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "panic".into());
            failures.push(message);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
