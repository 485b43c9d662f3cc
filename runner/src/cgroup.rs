//! cgroups: v1 (one hierarchy per controller) and v2 (unified), detected at runtime.
//!
//! Where kiln's cgroups live: under the cgroup kiln itself runs in, in a `kiln/<id>` subtree
//! (v1: per controller, using that controller's own path from `/proc/self/cgroup`). Nesting keeps
//! every container inside the limits the caller of kiln was given (here the memory controller
//! places this process in a non-root cgroup). On v2 a non-root cgroup that holds processes cannot
//! hand controllers down ("no internal processes"), so when enabling them on kiln's own cgroup
//! fails, kiln falls back to `<mount>/kiln/<id>` at the root of the hierarchy, like Docker's
//! cgroupfs driver. The `kiln` directory itself is kept (removing it would race with concurrent
//! sandboxes); only `kiln/<id>` is removed.
//!
//! A v2 cgroup is entered at clone time (`CLONE_INTO_CGROUP`), a v1 one by a `cgroup.procs`
//! write after it (an RCU grace period: 5-20 ms); hence a sandbox without limits on a hybrid
//! host gets only a v2 tracking cgroup (see the crate doc, "cgroups").

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::spec::Limits;
use crate::SandboxError;

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// How the sandbox finds its cgroups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CgroupMode {
    /// v2 when `/sys/fs/cgroup` is a cgroup2 mount, else v1 hierarchies found in mountinfo.
    #[default]
    Auto,
    /// A cgroup2 hierarchy mounted at this path (for hybrid hosts with `/sys/fs/cgroup/unified`).
    V2 { mount: PathBuf },
    /// No cgroups: limits are refused and processes are tracked by the pid namespace only.
    Disabled,
}

#[derive(Debug, Clone)]
enum Layout {
    V1 {
        controllers: Vec<(&'static str, PathBuf)>,
        /// `…/kiln` in a cgroup2 hierarchy mounted beside the v1 ones (a hybrid host): where a
        /// sandbox without limits goes (entered at clone, no `cgroup.procs` write).
        tracking: Option<PathBuf>,
    },
    V2 {
        own_base: PathBuf,
        root_base: PathBuf,
    },
    Disabled,
}

/// Knows where to create sandbox cgroups.
#[derive(Debug, Clone)]
pub(crate) struct CgroupManager {
    layout: Layout,
}

/// The cgroup directories of one sandbox.
#[derive(Debug)]
pub(crate) struct SandboxCgroup {
    pub directories: Vec<PathBuf>,
    memory: Option<PathBuf>,
    v2: bool,
    /// The v2 directory (one of `directories`) a clone can be placed in at birth.
    clone_directory: Option<PathBuf>,
    /// Its fd, for `clone3`'s `CLONE_INTO_CGROUP`; closed once the process is placed.
    clone_fd: Option<OwnedFd>,
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && bytes[index + 1..index + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[index + 1] - b'0') * 64
                + (bytes[index + 2] - b'0') * 8
                + (bytes[index + 3] - b'0');
            out.push(value);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn join_cgroup_path(mount: &Path, relative: &str) -> PathBuf {
    let trimmed = relative.trim_start_matches('/');
    if trimmed.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(trimmed)
    }
}

fn read_own_cgroups() -> io::Result<Vec<(Vec<String>, String)>> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _hierarchy = parts.next()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let path = parts.next()?.to_owned();
            Some((controllers, path))
        })
        .collect())
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(path_c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(path_c.as_ptr(), &mut stat) == 0 && stat.f_type == libc::CGROUP2_SUPER_MAGIC
    }
}

impl CgroupManager {
    pub(crate) fn new(mode: &CgroupMode) -> io::Result<Self> {
        let layout = match mode {
            CgroupMode::Disabled => Layout::Disabled,
            CgroupMode::V2 { mount } => Self::v2_layout(mount)?,
            CgroupMode::Auto => {
                let default = Path::new("/sys/fs/cgroup");
                if is_cgroup2(default) {
                    Self::v2_layout(default)?
                } else {
                    Self::v1_layout()?
                }
            }
        };
        Ok(CgroupManager { layout })
    }

    fn v2_layout(mount: &Path) -> io::Result<Layout> {
        if !is_cgroup2(mount) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a cgroup2 mount", mount.display()),
            ));
        }
        let own = read_own_cgroups()?
            .into_iter()
            .find(|(controllers, _)| controllers.is_empty())
            .map(|(_, path)| path)
            .unwrap_or_else(|| "/".to_owned());
        Ok(Layout::V2 {
            own_base: join_cgroup_path(mount, &own).join("kiln"),
            root_base: mount.join("kiln"),
        })
    }

    fn v1_layout() -> io::Result<Layout> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let own = read_own_cgroups()?;
        let mut controllers = Vec::new();
        for controller in CONTROLLERS {
            let found = find_cgroup_mount(&mountinfo, |fs_type, options| {
                fs_type == "cgroup" && options.split(',').any(|option| option == controller)
            });
            let Some((mount_root, mount_point)) = found else {
                continue;
            };
            let base = own_kiln_base(&own, &mount_root, &mount_point, |names| {
                names.iter().any(|name| name == controller)
            });
            controllers.push((controller, base));
        }
        Ok(Layout::V1 {
            controllers,
            tracking: hybrid_tracking_base(&mountinfo, &own),
        })
    }

    /// A short description for logs and errors.
    pub(crate) fn version(&self) -> &'static str {
        match self.layout {
            Layout::V1 { .. } => "v1",
            Layout::V2 { .. } => "v2",
            Layout::Disabled => "disabled",
        }
    }

    /// The directories a sandbox with this id would use (recorded before they are created).
    pub(crate) fn planned_directories(&self, id: &str) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1 {
                controllers,
                tracking,
            } => tracking
                .iter()
                .chain(controllers.iter().map(|(_, base)| base))
                .map(|base| base.join(id))
                .collect(),
            Layout::V2 {
                own_base,
                root_base,
            } => vec![own_base.join(id), root_base.join(id)],
            Layout::Disabled => Vec::new(),
        }
    }

    fn check_limits(
        &self,
        limits: &Limits,
        available: &dyn Fn(&str) -> bool,
    ) -> Result<(), SandboxError> {
        let wanted: [(&'static str, &'static str, bool); 3] = [
            ("memory", "memory", limits.memory_bytes.is_some()),
            ("cpu", "cpu", limits.cpu.is_some()),
            ("pids", "pids", limits.pids.is_some()),
        ];
        for (limit, controller, asked) in wanted {
            if asked && !available(controller) {
                return Err(SandboxError::ControllerUnavailable { limit, controller });
            }
        }
        Ok(())
    }

    /// Creates the sandbox's cgroups and applies the limits.
    pub(crate) fn create(&self, id: &str, limits: &Limits) -> Result<SandboxCgroup, SandboxError> {
        match &self.layout {
            Layout::Disabled => {
                self.check_limits(limits, &|_| false)?;
                Ok(SandboxCgroup {
                    directories: Vec::new(),
                    memory: None,
                    v2: false,
                    clone_directory: None,
                    clone_fd: None,
                })
            }
            Layout::V1 {
                controllers,
                tracking,
            } => {
                self.check_limits(limits, &|name| controllers.iter().any(|(c, _)| *c == name))?;
                let unlimited =
                    limits.memory_bytes.is_none() && limits.cpu.is_none() && limits.pids.is_none();
                if let (true, Some(base)) = (unlimited, tracking) {
                    // a tracking cgroup that cannot be made (not writable, no such mount any
                    // more) is not an error: the v1 controllers below are used instead
                    if let Ok(cgroup) = create_tracking_cgroup(base, id) {
                        return Ok(cgroup);
                    }
                }
                let mut cgroup = SandboxCgroup {
                    directories: Vec::new(),
                    memory: None,
                    v2: false,
                    clone_directory: None,
                    clone_fd: None,
                };
                for (controller, base) in controllers {
                    let directory = base.join(id);
                    create_dir_all(base)?;
                    fs::create_dir(&directory).map_err(|e| {
                        SandboxError::io(format!("creating cgroup {}", directory.display()), e)
                    })?;
                    cgroup.directories.push(directory.clone());
                    match *controller {
                        "memory" => {
                            if let Some(bytes) = limits.memory_bytes {
                                write_file(
                                    &directory.join("memory.limit_in_bytes"),
                                    &bytes.to_string(),
                                )?;
                                let swap = directory.join("memory.memsw.limit_in_bytes");
                                if swap.exists() {
                                    write_file(&swap, &bytes.to_string())?;
                                }
                            }
                            cgroup.memory = Some(directory);
                        }
                        "cpu" => {
                            if let Some(cpu) = limits.cpu {
                                write_file(
                                    &directory.join("cpu.cfs_period_us"),
                                    &cpu.period_us.to_string(),
                                )?;
                                write_file(
                                    &directory.join("cpu.cfs_quota_us"),
                                    &cpu.quota_us.to_string(),
                                )?;
                            }
                        }
                        "pids" => {
                            if let Some(pids) = limits.pids {
                                write_file(&directory.join("pids.max"), &pids.to_string())?;
                            }
                        }
                        _ => {}
                    }
                }
                Ok(cgroup)
            }
            Layout::V2 {
                own_base,
                root_base,
            } => {
                let base = match prepare_v2_base(own_base) {
                    Ok(()) => own_base,
                    Err(_) => {
                        prepare_v2_base(root_base)?;
                        root_base
                    }
                };
                let controllers =
                    fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
                let enabled: Vec<&str> = controllers.split_whitespace().collect();
                self.check_limits(limits, &|name| enabled.contains(&name))?;
                let directory = base.join(id);
                fs::create_dir(&directory).map_err(|e| {
                    SandboxError::io(format!("creating cgroup {}", directory.display()), e)
                })?;
                let mut cgroup = SandboxCgroup {
                    directories: vec![directory.clone()],
                    memory: None,
                    v2: true,
                    clone_directory: None,
                    clone_fd: None,
                };
                if enabled.contains(&"memory") {
                    if let Some(bytes) = limits.memory_bytes {
                        write_file(&directory.join("memory.max"), &bytes.to_string())?;
                        let swap = directory.join("memory.swap.max");
                        if swap.exists() {
                            write_file(&swap, "0")?;
                        }
                    }
                    cgroup.memory = Some(directory.clone());
                }
                if let Some(cpu) = limits.cpu {
                    write_file(
                        &directory.join("cpu.max"),
                        &format!("{} {}", cpu.quota_us, cpu.period_us),
                    )?;
                }
                if let Some(pids) = limits.pids {
                    write_file(&directory.join("pids.max"), &pids.to_string())?;
                }
                cgroup.clone_fd = Some(open_directory(&directory)?);
                cgroup.clone_directory = Some(directory);
                Ok(cgroup)
            }
        }
    }
}

/// `(root, mount point)` of the first cgroup mount in `mountinfo` whose file system type and
/// super options `wanted` accepts.
fn find_cgroup_mount(
    mountinfo: &str,
    wanted: impl Fn(&str, &str) -> bool,
) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut after_fields = after.split(' ');
        let fs_type = after_fields.next()?;
        let _source = after_fields.next()?;
        let options = after_fields.next().unwrap_or_default();
        if !wanted(fs_type, options) {
            return None;
        }
        let fields: Vec<&str> = before.split(' ').collect();
        Some((
            unescape_mountinfo(fields.get(3)?),
            unescape_mountinfo(fields.get(4)?),
        ))
    })
}

/// `<mount point>/<kiln's own path in that hierarchy>/kiln`; the hierarchy is the line of
/// `/proc/self/cgroup` whose controller list `is_hierarchy` accepts.
fn own_kiln_base(
    own: &[(Vec<String>, String)],
    mount_root: &str,
    mount_point: &str,
    is_hierarchy: impl Fn(&[String]) -> bool,
) -> PathBuf {
    let own_path = own
        .iter()
        .find(|(names, _)| is_hierarchy(names))
        .map(|(_, path)| path.as_str())
        .unwrap_or("/");
    let relative = own_path.strip_prefix(mount_root).unwrap_or(own_path);
    join_cgroup_path(Path::new(mount_point), relative).join("kiln")
}

/// `<cgroup2 mount>/<kiln's own v2 path>/kiln` when a cgroup2 hierarchy is mounted beside the
/// v1 ones (a hybrid host), else `None`.
fn hybrid_tracking_base(mountinfo: &str, own: &[(Vec<String>, String)]) -> Option<PathBuf> {
    let (mount_root, mount_point) =
        find_cgroup_mount(mountinfo, |fs_type, _| fs_type == "cgroup2")?;
    if !is_cgroup2(Path::new(&mount_point)) {
        return None;
    }
    Some(own_kiln_base(own, &mount_root, &mount_point, |names| {
        names.is_empty()
    }))
}

/// `base/id` in the hybrid host's cgroup2 hierarchy, with no controllers: tracking only.
fn create_tracking_cgroup(base: &Path, id: &str) -> Result<SandboxCgroup, SandboxError> {
    create_dir_all(base)?;
    let directory = base.join(id);
    fs::create_dir(&directory)
        .map_err(|e| SandboxError::io(format!("creating cgroup {}", directory.display()), e))?;
    let target = match open_directory(&directory) {
        Ok(target) => target,
        Err(error) => {
            let _ = fs::remove_dir(&directory);
            return Err(error);
        }
    };
    Ok(SandboxCgroup {
        directories: vec![directory.clone()],
        memory: None,
        v2: true,
        clone_directory: Some(directory),
        clone_fd: Some(target),
    })
}

fn open_directory(directory: &Path) -> Result<OwnedFd, SandboxError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(directory)
        .map(OwnedFd::from)
        .map_err(|e| SandboxError::io(format!("opening cgroup {}", directory.display()), e))
}

fn create_dir_all(path: &Path) -> Result<(), SandboxError> {
    fs::create_dir_all(path)
        .map_err(|e| SandboxError::io(format!("creating cgroup {}", path.display()), e))
}

fn write_file(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value)
        .map_err(|e| SandboxError::io(format!("writing {value:?} to {}", path.display()), e))
}

/// Makes `base` (…/kiln) exist with the memory, cpu and pids controllers handed down to it.
fn prepare_v2_base(base: &Path) -> Result<(), SandboxError> {
    let parent = base.parent().unwrap_or(base);
    let available = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if !wanted.is_empty() {
        let current = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|w| !current.split_whitespace().any(|c| c == &w[1..]))
            .collect();
        if !missing.is_empty() {
            let line = missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            write_file(&parent.join("cgroup.subtree_control"), &line)?;
        }
    }
    create_dir_all(base)?;
    if !wanted.is_empty() {
        let current = fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
        if current.split_whitespace().count() < wanted.len() {
            write_file(&base.join("cgroup.subtree_control"), &wanted.join(" "))?;
        }
    }
    Ok(())
}

impl SandboxCgroup {
    /// The fd of the v2 directory a clone can be placed in at birth (`CLONE_INTO_CGROUP`).
    pub(crate) fn clone_target(&self) -> Option<RawFd> {
        self.clone_fd.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Moves a process into every directory of the sandbox, but the clone target when the clone
    /// already placed it there.
    pub(crate) fn add_process(
        &mut self,
        pid: i32,
        placed_by_clone: bool,
    ) -> Result<(), SandboxError> {
        self.clone_fd = None;
        let placed = match placed_by_clone {
            true => self.clone_directory.as_ref(),
            false => None,
        };
        for directory in &self.directories {
            if Some(directory) != placed {
                write_file(&directory.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer killed a process in this cgroup.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(memory) = &self.memory else {
            return false;
        };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let Ok(text) = fs::read_to_string(memory.join(file)) else {
            return false;
        };
        text.lines().any(|line| {
            let mut parts = line.split_whitespace();
            parts.next() == Some("oom_kill")
                && parts
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
                    > 0
        })
    }

    /// Kills whatever is left and removes the directories.
    pub(crate) fn remove(&self) -> io::Result<()> {
        remove_cgroup_directories(&self.directories)
    }
}

/// Kills every process in the given cgroup directories and removes them; missing ones are fine.
pub(crate) fn remove_cgroup_directories(directories: &[PathBuf]) -> io::Result<()> {
    let mut first_error = None;
    for directory in directories {
        if !directory.exists() {
            continue;
        }
        let kill_file = directory.join("cgroup.kill");
        if kill_file.exists() {
            let _ = fs::write(&kill_file, "1");
        }
        let mut attempt = 0;
        loop {
            let procs = fs::read_to_string(directory.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            for pid in &pids {
                // SAFETY: signalling a pid read from the sandbox's own cgroup
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
            match fs::remove_dir(directory) {
                Ok(()) => break,
                Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                Err(error) => {
                    attempt += 1;
                    if attempt > 500 {
                        first_error.get_or_insert(io::Error::new(
                            error.kind(),
                            format!("removing cgroup {}: {error}", directory.display()),
                        ));
                        break;
                    }
                    thread::sleep(Duration::from_millis(if attempt < 20 { 1 } else { 10 }));
                }
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\04"), "/x\\04");
    }
}
