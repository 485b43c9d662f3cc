//! Image ids as Docker shows them (the config digest; the manifest digest under DIGEST) and
//! accepted by id prefix; `kiln pull`'s per-layer progress lines when not on a terminal.

mod image_support;
mod pty_support;

use image_support::{push, Kiln};
use kiln_testsupport::{busybox_image, ImageBuilder, LayerBuilder, TestRegistry};

#[test]
fn image_id_is_the_config_digest_and_the_manifest_digest_is_shown_as_digest() {
    let registry = TestRegistry::start();
    let image = busybox_image();
    let name = push(&registry, &image, "busybox:latest").to_string();
    let kiln = Kiln::new();
    kiln.ok(&["pull", "-q", &name]);
    let config_digest = image.config_descriptor.digest.clone();
    let manifest_digest = image.manifest_digest.clone();
    assert_ne!(config_digest, manifest_digest);
    let short_id = &config_digest.hex()[..12];

    let table = kiln.ok(&["images"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(!header.contains("DIGEST"), "{table}");
    let row = table.lines().nth(1).expect("one image row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2], short_id, "{table}");
    assert!(!table.contains(&manifest_digest.hex()[..12]), "{table}");

    let with_digests = kiln.ok(&["images", "--digests"]);
    let header: Vec<&str> = with_digests
        .lines()
        .next()
        .unwrap_or_default()
        .split("   ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .collect();
    assert_eq!(
        header,
        ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"],
        "{with_digests}"
    );
    let cells: Vec<String> = with_digests
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(cells[2], manifest_digest.to_string(), "{with_digests}");
    assert_eq!(cells[3], short_id, "{with_digests}");

    assert_eq!(kiln.ok(&["images", "-q"]).trim(), short_id);
    assert_eq!(
        kiln.ok(&["images", "-q", "--no-trunc"]).trim(),
        config_digest.to_string()
    );
    let json: serde_json::Value =
        serde_json::from_str(kiln.ok(&["images", "--format", "json"]).trim()).expect("json");
    assert_eq!(json["ID"], config_digest.to_string());
    assert_eq!(json["Digest"], manifest_digest.to_string());

    let inspected = kiln.inspect(&name);
    assert_eq!(inspected["Id"], config_digest.to_string());
    assert_eq!(inspected["Digest"], manifest_digest.to_string());
    let repository = name.rsplit_once(':').expect("tag").0;
    assert_eq!(
        inspected["RepoDigests"],
        serde_json::json!([format!("{repository}@{manifest_digest}")])
    );

    // The id and its prefixes find the image: inspect, tag, run, rmi.
    for text in [
        short_id.to_string(),
        config_digest.hex()[..6].to_string(),
        config_digest.to_string(),
    ] {
        assert_eq!(kiln.inspect(&text)["Id"], config_digest.to_string());
    }
    kiln.ok(&["tag", &config_digest.hex()[..8], "copy:1"]);
    assert_eq!(kiln.inspect("copy:1")["Id"], config_digest.to_string());
    let echoed = kiln.ok(&["run", "--rm", short_id, "echo", "by-id"]);
    assert_eq!(echoed.trim(), "by-id");
    // Two names: by id needs --force, as docker's "image is referenced in multiple
    // repositories".
    let refused = kiln.fail(&["rmi", short_id]);
    assert!(refused.contains("--force"), "{refused}");
    let removed = kiln.ok(&["rmi", "--force", short_id]);
    assert!(
        removed.contains("Untagged: docker.io/library/copy:1"),
        "{removed}"
    );
    assert!(removed.contains(&format!("Untagged: {name}")), "{removed}");
    assert!(
        removed.contains(&format!("Deleted: {config_digest}")),
        "{removed}"
    );
    assert!(kiln.image_names().is_empty());
    let missing = kiln.fail(&["inspect", short_id]);
    assert!(missing.contains("no such image"), "{missing}");
}

#[test]
fn an_id_prefix_shared_by_two_images_is_ambiguous_and_a_longer_one_is_not() {
    // Birthday search: among a few hundred configs two share their first 4 hex characters.
    let mut seen: std::collections::HashMap<String, kiln_testsupport::BuiltImage> =
        std::collections::HashMap::new();
    let (first, second) = (0..20_000)
        .find_map(|number| {
            let image = single_file_image_with_env("same", number);
            let prefix = image.config_descriptor.digest.hex()[..4].to_string();
            match seen.remove(&prefix) {
                Some(earlier) => Some((earlier, image)),
                None => {
                    seen.insert(prefix, image);
                    None
                }
            }
        })
        .expect("two configs with a common 4-character prefix");
    let registry = TestRegistry::start();
    let kiln = Kiln::new();
    let first_name = push(&registry, &first, "first:1").to_string();
    let second_name = push(&registry, &second, "second:1").to_string();
    kiln.ok(&["pull", "-q", &first_name]);
    kiln.ok(&["pull", "-q", &second_name]);
    let common = &first.config_descriptor.digest.hex()[..4];
    let error = kiln.fail(&["inspect", common]);
    assert!(error.contains("matches 2 images"), "{error}");
    let error = kiln.fail(&["rmi", common]);
    assert!(error.contains("matches 2 images"), "{error}");
    for (image, name) in [(&first, &first_name), (&second, &second_name)] {
        let id = &image.config_descriptor.digest;
        assert_eq!(kiln.inspect(&id.hex()[..12])["Name"], name.as_str());
    }
}

fn single_file_image_with_env(text: &str, number: usize) -> kiln_testsupport::BuiltImage {
    let mut layer = LayerBuilder::new();
    layer.file("file", text.as_bytes(), 0o644);
    ImageBuilder::new()
        .layer_tar(layer.finish())
        .config(|config| config.env = Some(vec![format!("NUMBER={number}")]))
        .build()
}

/// Layer tars `layer-0`..`layer-{count}` with distinct content.
fn layers(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|index| {
            let mut layer = LayerBuilder::new();
            layer.file(
                &format!("layer-{index}"),
                format!("content of layer {index}").as_bytes(),
                0o644,
            );
            layer.finish()
        })
        .collect()
}

/// The progress lines (stderr) and the result lines (stdout) of a pull with both piped.
fn pull_output(kiln: &Kiln, name: &str) -> (String, String) {
    let output = kiln.run(&["pull", name]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8_lossy(&output.stderr).into_owned(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The lines of `progress` about the layer with this short digest.
fn layer_lines<'a>(progress: &'a str, short: &str) -> Vec<&'a str> {
    progress
        .lines()
        .filter(|line| line.starts_with(&format!("{short}: ")))
        .collect()
}

#[test]
fn pull_prints_a_line_per_layer_state_when_not_on_a_terminal() {
    let registry = TestRegistry::start();
    let tars = layers(4);
    let mut base = ImageBuilder::new();
    for tar in &tars[..3] {
        base = base.layer_tar(tar.clone());
    }
    let base = base.build();
    let mut full = ImageBuilder::new();
    for tar in &tars {
        full = full.layer_tar(tar.clone());
    }
    let full = full.build();
    let base_name = push(&registry, &base, "layered:base").to_string();
    let full_name = push(&registry, &full, "layered:full").to_string();
    let kiln = Kiln::new();

    let (progress, result) = pull_output(&kiln, &base_name);
    let repository_path = "layered";
    assert_eq!(
        progress.lines().next(),
        Some(format!("base: Pulling from {repository_path}").as_str()),
        "{progress}"
    );
    for layer in &base.layers {
        let short = &layer.descriptor.digest.hex()[..12];
        let lines = layer_lines(&progress, short);
        assert!(!lines.is_empty(), "no line for layer {short}:\n{progress}");
        assert_eq!(lines[0], format!("{short}: Pulling fs layer"), "{progress}");
        assert_eq!(
            lines.last().copied(),
            Some(format!("{short}: Pull complete").as_str()),
            "{progress}"
        );
        assert!(
            lines
                .iter()
                .filter(|line| line.ends_with("Pull complete"))
                .count()
                == 1,
            "{progress}"
        );
    }
    let result_lines: Vec<&str> = result.lines().collect();
    assert_eq!(
        result_lines,
        [
            format!("Digest: {}", base.manifest_digest).as_str(),
            format!("Status: Downloaded newer image for {base_name}").as_str(),
            base_name.as_str(),
        ],
        "{result}"
    );

    // The bigger image shares three layers: they already exist, the fourth is pulled.
    let (progress, result) = pull_output(&kiln, &full_name);
    for (index, layer) in full.layers.iter().enumerate() {
        let short = &layer.descriptor.digest.hex()[..12];
        let lines = layer_lines(&progress, short);
        let expected = if index < 3 {
            format!("{short}: Already exists")
        } else {
            format!("{short}: Pull complete")
        };
        assert_eq!(lines.last().copied(), Some(expected.as_str()), "{progress}");
        if index < 3 {
            assert_eq!(lines.len(), 1, "{progress}");
        }
    }
    assert!(
        result.contains(&format!("Digest: {}", full.manifest_digest)),
        "{result}"
    );
    assert!(
        result.contains(&format!("Status: Downloaded newer image for {full_name}")),
        "{result}"
    );

    // Again: everything exists, and the status says so.
    let (progress, result) = pull_output(&kiln, &full_name);
    for layer in &full.layers {
        let short = &layer.descriptor.digest.hex()[..12];
        assert_eq!(
            layer_lines(&progress, short),
            [format!("{short}: Already exists").as_str()],
            "{progress}"
        );
    }
    assert!(
        result.contains(&format!("Status: Image is up to date for {full_name}")),
        "{result}"
    );
}

#[test]
fn pull_on_a_terminal_draws_a_bar_per_layer() {
    let registry = TestRegistry::start();
    let mut builder = ImageBuilder::new();
    for tar in layers(3) {
        builder = builder.layer_tar(tar);
    }
    let image = builder.build();
    let name = push(&registry, &image, "bars:1").to_string();
    let kiln = Kiln::new();
    let pty = pty_support::Pty::open();
    let mut child = pty.spawn(&mut kiln.command(&["pull", &name]));
    let status = pty_support::wait_with_timeout(&mut child, std::time::Duration::from_secs(60));
    let shown = pty.wait_for(
        &format!("Status: Downloaded newer image for {name}"),
        std::time::Duration::from_secs(10),
    );
    assert!(status.success(), "{shown}");
    // indicatif bars, not the plain lines: each layer's bar ends as "Pull complete" with its
    // byte count, redrawn in place (cursor movements).
    assert!(!shown.contains("Pulling from"), "{shown}");
    assert!(shown.contains("\u{1b}["), "{shown:?}");
    for layer in &image.layers {
        let short = &layer.descriptor.digest.hex()[..12];
        let bar_lines: Vec<&str> = shown
            .split(['\r', '\n'])
            .filter(|line| line.contains(&format!("{short}: Pull complete")))
            .collect();
        assert!(
            !bar_lines.is_empty(),
            "no finished bar for {short}: {shown:?}"
        );
        assert!(bar_lines.iter().any(|line| line.contains('[')), "{shown:?}");
    }
    assert!(
        shown.contains(&format!("Digest: {}", image.manifest_digest)),
        "{shown}"
    );
}
