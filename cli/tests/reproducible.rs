//! Reproducible builds (issue 6): the same Dockerfile and context built in two brand-new roots
//! with SOURCE_DATE_EPOCH and `rewrite-timestamp=true` give the same image digest, RUN steps
//! and all; without the epoch they do not (file and history times differ).

mod image_support;

use image_support::{push, Kiln};
use kiln_testsupport::{busybox_image, TestRegistry};

/// Builds the context in a fresh root and returns the stored image's manifest digest.
fn build_in_fresh_root(base: &str, context: &std::path::Path, epoch: Option<&str>) -> String {
    let kiln = Kiln::new();
    kiln.ok(&["pull", "-q", base]);
    let mut command = kiln.command(&[
        "build",
        "-t",
        "repro:1",
        "-o",
        "type=image,rewrite-timestamp=true",
        context.to_str().expect("path"),
    ]);
    if let Some(epoch) = epoch {
        command.env("SOURCE_DATE_EPOCH", epoch);
    }
    let output = command.output().expect("kiln build");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed = kiln.ok(&["images", "--digests", "--format", "json"]);
    let images: Vec<serde_json::Value> = listed
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect();
    let image = images
        .iter()
        .find(|image| image.to_string().contains("repro"))
        .unwrap_or_else(|| panic!("no repro image in {listed}"));
    image["Digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no Digest in {image}"))
        .to_string()
}

#[test]
fn two_fresh_roots_build_the_same_digest_with_source_date_epoch() {
    let registry = TestRegistry::start();
    let base = push(&registry, &busybox_image(), "busybox:latest").to_string();
    let context = tempfile::tempdir().expect("context");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {base}\nRUN echo built > /built && mkdir -p /var/data && echo x > /var/data/x\n\
             COPY app.txt /app/\nENV A=1\nRUN touch /app/later\n"
        ),
    )
    .expect("Dockerfile");
    std::fs::write(context.path().join("app.txt"), "app\n").expect("app.txt");
    let first = build_in_fresh_root(&base, context.path(), Some("1700000000"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build_in_fresh_root(&base, context.path(), Some("1700000000"));
    assert!(first.starts_with("sha256:"), "{first}");
    assert_eq!(first, second, "same epoch, same Dockerfile: same digest");

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let without_epoch = build_in_fresh_root(&base, context.path(), None);
    assert_ne!(first, without_epoch);
}
