//! Builds under faults: `kiln build` killed with SIGKILL in the middle of a RUN, two builds at
//! once on one store, and secrets that must never reach a layer, the config, or a snapshot.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{context, describe, Registry, Root};

/// Directories named `id` under a `kiln` directory anywhere in the cgroup hierarchies (v1
/// controllers and the unified one), a few levels deep.
fn sandbox_cgroups(id: &str) -> Vec<PathBuf> {
    fn visit(dir: &Path, id: &str, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if !file_type.is_dir() {
                continue;
            }
            let path = entry.path();
            if entry.file_name() == "kiln" {
                let candidate = path.join(id);
                if candidate.is_dir() {
                    out.push(candidate);
                }
            } else if depth > 0 {
                visit(&path, id, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    visit(Path::new("/sys/fs/cgroup"), id, 4, &mut out);
    out
}

/// Sandbox ids with a state directory under `<root>/run`.
fn sandbox_ids(root: &Root) -> Vec<String> {
    std::fs::read_dir(root.path().join("run"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().is_dir())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids in a sandbox's cgroups.
fn cgroup_pids(id: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for dir in sandbox_cgroups(id) {
        let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(
            text.lines()
                .filter_map(|line| line.trim().parse::<i32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn process_alive(pid: i32) -> bool {
    // A zombie is gone for our purposes (its parent will reap it).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn killed_build_leaves_nothing_behind_after_the_next_build() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = context(&[(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nRUN echo before > /before\nARG SLEEP=30\nRUN echo start && sleep $SLEEP && echo slept > /slept\n",
    )]);
    let registry_arg = format!("REGISTRY={}", registry.address());
    let mut child = root
        .command(
            "build",
            &[
                "--progress",
                "json",
                "--build-arg",
                &registry_arg,
                "-t",
                "killed:latest",
                &context.path().to_string_lossy(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kiln build");

    // Wait for the sleeping step to print its first line: it is running in its sandbox.
    let stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("\"kind\":\"log\"") && line.contains("start") {
                let _ = sender.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    if receiver.recv_timeout(Duration::from_secs(120)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the RUN never started:\n{}",
            reader.join().unwrap_or_default()
        );
    }
    let ids = sandbox_ids(&root);
    assert!(
        !ids.is_empty(),
        "no sandbox state under {}",
        root.path().display()
    );
    let pids: Vec<i32> = ids.iter().flat_map(|id| cgroup_pids(id)).collect();
    assert!(
        !pids.is_empty(),
        "no cgroup with processes for sandboxes {ids:?}"
    );
    assert!(
        !root.mounts().is_empty(),
        "the RUN's overlay should be mounted"
    );

    child.kill().expect("SIGKILL");
    child.wait().expect("reaping kiln");
    let _ = reader.join();

    // The next build on the same root cleans up what the killed one left, and succeeds.
    let rebuilt = root.build(
        registry.address(),
        context.path(),
        &["-t", "killed:latest", "--build-arg", "SLEEP=0"],
    );
    rebuilt.assert_success();
    assert!(
        rebuilt.cached_step("RUN echo before"),
        "{:?}",
        rebuilt.ran()
    );
    let output = root.run_shell("killed:latest", "cat /before /slept");
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "before\nslept\n");

    root.assert_clean();
    for id in &ids {
        let left = sandbox_cgroups(id);
        assert!(left.is_empty(), "cgroups of sandbox {id} left: {left:?}");
        assert!(
            !root.path().join("run").join(id).exists(),
            "state of sandbox {id} left"
        );
    }
    // The sleeping process died with its sandbox (within a moment of the cleanup).
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|pid| process_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive: Vec<&i32> = pids.iter().filter(|pid| process_alive(**pid)).collect();
    assert!(alive.is_empty(), "sandbox processes still alive: {alive:?}");
}

#[test]
fn two_builds_at_once_share_the_base_and_a_cache_mount() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let dockerfile = |name: &str| {
        format!(
            "ARG REGISTRY\nFROM ${{REGISTRY}}/busybox:latest\n\
             RUN --mount=type=cache,id=shared-cache,target=/cache echo {name} >> /cache/shared-log && sleep 1\n\
             RUN --mount=type=cache,id=locked-cache,target=/cache,sharing=locked echo {name} >> /cache/locked-log && cp /cache/locked-log /locked-seen\n\
             COPY mine.txt /mine\n\
             RUN echo {name} > /built-by\n"
        )
    };
    let first = context(&[
        ("Dockerfile", &dockerfile("alpha")),
        ("mine.txt", "alpha\n"),
    ]);
    let second = context(&[("Dockerfile", &dockerfile("beta")), ("mine.txt", "beta\n")]);
    let registry_arg = format!("REGISTRY={}", registry.address());
    let spawn = |tag: &str, dir: &Path| {
        root.command(
            "build",
            &[
                "--progress",
                "plain",
                "--build-arg",
                &registry_arg,
                "-t",
                tag,
                &dir.to_string_lossy(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kiln build")
    };
    let mut alpha = spawn("alpha:latest", first.path());
    let mut beta = spawn("beta:latest", second.path());
    let mut outputs = Vec::new();
    for child in [&mut alpha, &mut beta] {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let status = child.wait().expect("waiting for kiln build");
        outputs.push((status, stderr));
    }
    for (status, stderr) in &outputs {
        assert!(status.success(), "a concurrent build failed:\n{stderr}");
    }
    for name in ["alpha", "beta"] {
        let output = root.run_shell(&format!("{name}:latest"), "cat /mine /built-by");
        assert!(output.status.success(), "{}", describe(&output));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{name}\n{name}\n")
        );
    }

    // Both wrote to the same cache mounts: a third build reads them.
    let reader = context(&[(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nRUN --mount=type=cache,id=shared-cache,target=/cache sort /cache/shared-log > /shared\nRUN --mount=type=cache,id=locked-cache,target=/cache,sharing=locked sort /cache/locked-log > /locked\n",
    )]);
    root.build(registry.address(), reader.path(), &["-t", "reader:latest"])
        .assert_success();
    let output = root.run_shell("reader:latest", "cat /shared /locked");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "alpha\nbeta\nalpha\nbeta\n",
        "{}",
        describe(&output)
    );
    root.assert_clean();
}

/// Every place bytes of a build can rest: blobs (gzip layers decompressed) and snapshot trees.
fn find_bytes_in_store(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let blobs = root.join("content/blobs/sha256");
    for entry in std::fs::read_dir(&blobs).expect("blobs dir").flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let plain = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut decoded = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut decoded)
                .expect("gunzip a layer");
            decoded
        } else {
            assert!(
                !bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
                "zstd layer: the test cannot read it"
            );
            bytes
        };
        if contains(&plain, needle) {
            found.push(entry.path().display().to_string());
        }
    }
    let mut stack = vec![root.join("snapshots")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                stack.push(entry.path());
            } else if file_type.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                if contains(&bytes, needle) {
                    found.push(entry.path().display().to_string());
                }
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn secrets_never_reach_a_layer_or_the_config() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let file_secret = "kiln-file-secret-5e1d9a7c";
    let env_secret = "kiln-env-secret-83b2f4e0";
    let context = context(&[
        (
            "Dockerfile",
            "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\n\
             RUN --mount=type=secret,id=token wc -c /run/secrets/token > /token-size && sha256sum /run/secrets/token | cut -c1-8 > /token-hash\n\
             RUN --mount=type=secret,id=token,target=/etc/token cp /etc/token /tmp/.kept-in-tmp-then-removed && rm /tmp/.kept-in-tmp-then-removed\n\
             RUN --mount=type=secret,id=envtoken,env=TOKEN echo \"${#TOKEN}\" > /env-length\n\
             RUN --mount=type=secret,id=token ls /run/secrets > /listing\n",
        ),
        (".dockerignore", "secret.txt\n"),
    ]);
    let secret_file = context.path().join("secret.txt");
    std::fs::write(&secret_file, file_secret).expect("writing the secret");
    let secret_arg = format!("id=token,src={}", secret_file.display());
    let output = root
        .command(
            "build",
            &[
                "--progress",
                "plain",
                "--build-arg",
                &format!("REGISTRY={}", registry.address()),
                "--secret",
                &secret_arg,
                "--secret",
                "id=envtoken,env=KILN_TEST_ENV_SECRET",
                "-t",
                "secrets:latest",
                &context.path().to_string_lossy(),
            ],
        )
        .env("KILN_TEST_ENV_SECRET", env_secret)
        .stdin(Stdio::null())
        .output()
        .expect("kiln build");
    assert!(output.status.success(), "{}", describe(&output));
    let check = root.run_shell("secrets:latest", "cat /token-size /env-length /listing");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        format!(
            "{} /run/secrets/token\n{}\ntoken\n",
            file_secret.len(),
            env_secret.len()
        ),
        "{}",
        describe(&check)
    );

    for secret in [file_secret, env_secret] {
        let found = find_bytes_in_store(root.path(), secret.as_bytes());
        assert!(found.is_empty(), "secret {secret:?} found in {found:?}");
        let config = serde_json::to_string(&root.image_config("secrets:latest")).unwrap();
        assert!(!config.contains(secret), "secret in the config: {config}");
        let build_output = String::from_utf8_lossy(&output.stderr);
        assert!(
            !build_output.contains(secret),
            "secret in the build output:\n{build_output}"
        );
    }
    root.assert_clean();
}

#[test]
fn interrupted_build_stops_its_run_and_cleans_up_by_itself() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = context(&[(
        "Dockerfile",
        "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nRUN echo start && sleep 30\n",
    )]);
    let registry_arg = format!("REGISTRY={}", registry.address());
    let mut child = root
        .command(
            "build",
            &[
                "--progress",
                "json",
                "--build-arg",
                &registry_arg,
                &context.path().to_string_lossy(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kiln build");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("\"kind\":\"log\"") && line.contains("start") {
                let _ = sender.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    if receiver.recv_timeout(Duration::from_secs(120)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the RUN never started:\n{}",
            reader.join().unwrap_or_default()
        );
    }
    let ids = sandbox_ids(&root);
    let pids: Vec<i32> = ids.iter().flat_map(|id| cgroup_pids(id)).collect();
    let interrupted_at = Instant::now();
    // SAFETY: SIGINT to the child we spawned, by its pid
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("waiting for kiln");
    let took = interrupted_at.elapsed();
    let output = reader.join().unwrap_or_default();
    assert!(!status.success(), "an interrupted build must fail");
    assert!(
        took < Duration::from_secs(10),
        "kiln took {took:?} to stop after SIGINT:\n{output}"
    );
    assert!(output.contains("canceled"), "no cancel message:\n{output}");
    root.assert_clean();
    for id in &ids {
        let left = sandbox_cgroups(id);
        assert!(left.is_empty(), "cgroups of sandbox {id} left: {left:?}");
    }
    let alive: Vec<&i32> = pids.iter().filter(|pid| process_alive(**pid)).collect();
    assert!(alive.is_empty(), "sandbox processes still alive: {alive:?}");
}

#[test]
fn the_same_build_three_times_at_once() {
    let registry = Registry::with_busybox();
    let root = Root::new();
    let context = context(&[
        (
            "Dockerfile",
            "ARG REGISTRY\nFROM ${REGISTRY}/busybox:latest\nCOPY data.txt /data\nRUN sleep 1 && cat /data > /copy\nRUN --mount=type=cache,target=/cache,sharing=private echo x >> /cache/log\n",
        ),
        ("data.txt", "same\n"),
    ]);
    let registry_arg = format!("REGISTRY={}", registry.address());
    let mut children: Vec<_> = (0..3)
        .map(|_| {
            root.command(
                "build",
                &[
                    "--progress",
                    "plain",
                    "--build-arg",
                    &registry_arg,
                    "-t",
                    "same:latest",
                    &context.path().to_string_lossy(),
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kiln build")
        })
        .collect();
    for child in &mut children {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let status = child.wait().expect("waiting for kiln build");
        assert!(
            status.success(),
            "a concurrent identical build failed:\n{stderr}"
        );
    }
    let output = root.run_shell("same:latest", "cat /copy");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "same\n",
        "{}",
        describe(&output)
    );
    // A fourth build finds everything cached.
    let again = root.build(registry.address(), context.path(), &["-t", "same:latest"]);
    again.assert_success();
    assert!(again.ran_instructions().is_empty(), "{:?}", again.ran());
    root.assert_clean();
}
