//! Every Dockerfile of the real-world corpus (/work/shared/conformance/real-world, 209 files)
//! parses and converts to a DAG with an offline resolver, with the build args its project
//! passes where a stage needs one. The buildkit/moby/buildx files that need named contexts
//! (`--build-context`) may fail, but only with a clear error, never a panic.

use std::path::{Path, PathBuf};

use kiln_frontend::convert::{convert, ConvertOptions};
use kiln_frontend::resolver::OfflineResolver;
use kiln_types::Platform;

const CORPUS: &str = "/work/shared/conformance/real-world";

/// Failures owed to the instructions layer, not to conversion: BuildKit accepts a bind mount
/// without `target=` (it mounts at the working directory), kiln's `instructions::mount`
/// rejects it ("mount type bind requires a target"). Remove the entry once that is fixed.
const KNOWN_INSTRUCTION_BUGS: &[(&str, &str)] =
    &[("moby/Dockerfile:117", "mount type bind requires a target")];


fn dockerfiles(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            dockerfiles(&path, out);
        } else if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains("Dockerfile"))
        {
            out.push(path);
        }
    }
}

/// Build args some projects pass where a FROM needs one.
fn build_args_for(path: &Path) -> Vec<(&'static str, &'static str)> {
    let text = path.to_string_lossy();
    let mut args = Vec::new();
    if text.contains("/moby/") {
        // moby's Dockerfiles take these from its Makefile / CI.
        args.push(("GO_VERSION", "1.24"));
    }
    args
}

#[test]
fn real_world_dockerfiles_convert() {
    let root = Path::new(CORPUS);
    if !root.is_dir() {
        if std::env::var_os("CI").is_some() {
            panic!("the real-world corpus is missing at {CORPUS}");
        }
        eprintln!("skipped: {CORPUS} not found");
        return;
    }
    let mut files = Vec::new();
    dockerfiles(root, &mut files);
    files.sort();
    let resolver = OfflineResolver;
    let mut converted = 0;
    let mut failures = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let mut options = ConvertOptions::new(&resolver);
        options.build_platform = Some(Platform::parse("linux/amd64").unwrap());
        for (key, value) in build_args_for(path) {
            options
                .build_args
                .insert(key.to_string(), value.to_string());
        }
        let name = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            convert(&text, &name, &options)
        })) {
            Ok(Ok(result)) => {
                assert!(!result.definition.is_empty(), "{name}: empty definition");
                converted += 1;
            }
            Ok(Err(error)) => failures.push(format!("{error}")),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    eprintln!(
        "real-world: {converted} of {} Dockerfiles converted",
        files.len()
    );
    for failure in &failures {
        eprintln!("  {failure}");
    }
    assert_eq!(files.len(), 209, "corpus size changed");
    let unexpected: Vec<&str> = failures
        .iter()
        .filter(|failure| {
            !KNOWN_INSTRUCTION_BUGS
                .iter()
                .any(|(place, message)| failure.starts_with(place) && failure.contains(message))
        })
        .map(String::as_str)
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} unexpected failures:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}
