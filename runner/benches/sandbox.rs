//! Start and tear down a sandbox running `true` on a prepared busybox rootfs.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use kiln_runner::{CgroupMode, Network, Sandbox, SandboxConfig, SandboxSpec, Stdio, WaitOptions};

fn main() {
    divan::main();
}

fn prepare_rootfs(root: &Path) {
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static must be installed");
    for applet in ["sh", "true"] {
        symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    // the network files exist in the image, so no stubs are made or removed
    for file in ["hosts", "hostname", "resolv.conf"] {
        fs::write(root.join("etc").join(file), "").expect("network file");
    }
}

fn bench_spec(rootfs: &Path, network: Network) -> SandboxSpec {
    let mut spec = SandboxSpec::new(rootfs, vec!["/bin/true".into()]);
    spec.network = network;
    spec.stdout = Stdio::Null;
    spec.stderr = Stdio::Null;
    spec
}

fn run_one(bencher: divan::Bencher, network: Network, cgroups: CgroupMode) {
    let rootfs = tempfile::tempdir().expect("tempdir");
    prepare_rootfs(rootfs.path());
    let state = tempfile::tempdir().expect("tempdir");
    let sandbox = Sandbox::new(SandboxConfig {
        state_dir: state.path().join("run"),
        cgroups,
    })
    .expect("sandbox");
    bencher.bench_local(|| {
        let status = sandbox
            .run(
                bench_spec(rootfs.path(), network),
                WaitOptions::default(),
                |_, _| {},
            )
            .expect("run");
        assert!(status.success());
    });
}

/// The RUN default: network none, cgroups.
#[divan::bench(sample_count = 200)]
fn true_network_none(bencher: divan::Bencher) {
    run_one(bencher, Network::None, CgroupMode::Auto);
}

/// Network host (no new network namespace), cgroups.
#[divan::bench(sample_count = 200)]
fn true_network_host(bencher: divan::Bencher) {
    run_one(bencher, Network::Host, CgroupMode::Auto);
}

/// Network host without cgroups: the cost of namespaces, mounts and exec alone.
#[divan::bench(sample_count = 200)]
fn true_network_host_no_cgroups(bencher: divan::Bencher) {
    run_one(bencher, Network::Host, CgroupMode::Disabled);
}
