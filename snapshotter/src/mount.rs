//! Overlay mounts: the new mount API with one `lowerdir+` per layer (no total length limit),
//! and the classic `mount(2)` with the options string as a fallback. Both name layers relative
//! to `snapshots/` from a short-lived thread with its own working directory, so paths stay
//! short (fsconfig strings are limited to 255 bytes, mount options to one page).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::error::{Result, StoreError};

/// How overlays are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MountMethod {
    /// The new mount API when the kernel has `lowerdir+` (Linux 6.8), else [`Legacy`].
    ///
    /// [`Legacy`]: MountMethod::Legacy
    #[default]
    Auto,
    /// Only `fsopen`/`fsconfig(lowerdir+)`/`fsmount`.
    NewMountApi,
    /// Only `mount(2)` with an options string of at most one page: absolute paths when they
    /// fit, else paths relative to `snapshots/` from a thread that did `unshare(CLONE_FS)`.
    Legacy,
}

/// overlayfs stacks at most this many lower layers (`OVL_MAX_STACK`).
pub const MAX_OVERLAY_LAYERS: usize = 500;

/// What to mount. Every path is absolute and lies under `base` (the `snapshots/` dir).
pub(crate) struct OverlaySpec<'a> {
    /// Lower directories, topmost first.
    pub(crate) lowers: &'a [PathBuf],
    /// Upper and work directory; none for a read-only view.
    pub(crate) upper_and_work: Option<(&'a Path, &'a Path)>,
    pub(crate) base: &'a Path,
    /// overlayfs `volatile`: no sync of the upper (at unmount either), so the unmount does
    /// not wait for the disk; a committed upper is synced in the background (`crate::sync`).
    pub(crate) volatile: bool,
}

/// Options that keep the upper directory a plain, portable layer: no redirect xattrs for
/// renamed directories and no metadata-only copy-ups, which a layer diff could not express.
const PORTABLE_OPTIONS: [(&str, &str); 3] = [
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("index", "off"),
];

pub(crate) fn mount_overlay(
    target: &Path,
    spec: &OverlaySpec<'_>,
    method: MountMethod,
) -> Result<()> {
    if spec.lowers.len() > MAX_OVERLAY_LAYERS {
        return Err(StoreError::ChainTooDeep {
            layers: spec.lowers.len(),
            limit: MAX_OVERLAY_LAYERS,
        });
    }
    match method {
        MountMethod::NewMountApi => match mount_new_api(target, spec) {
            Ok(()) => Ok(()),
            Err(NewApiError::Unsupported(source)) => Err(mount_error(
                target,
                spec,
                "the kernel lacks fsconfig lowerdir+".into(),
                source,
            )),
            Err(NewApiError::Failed(error)) => Err(error),
        },
        MountMethod::Legacy => mount_legacy(target, spec),
        MountMethod::Auto => match mount_new_api(target, spec) {
            Ok(()) => Ok(()),
            Err(NewApiError::Unsupported(_)) => mount_legacy(target, spec),
            Err(NewApiError::Failed(error)) => Err(error),
        },
    }
}

fn mount_error(
    target: &Path,
    spec: &OverlaySpec<'_>,
    message: String,
    source: io::Error,
) -> StoreError {
    StoreError::Mount {
        target: target.to_path_buf(),
        layers: spec.lowers.len(),
        message,
        source,
    }
}

enum NewApiError {
    /// The kernel has no new mount API or no `lowerdir+`: try the legacy way.
    Unsupported(io::Error),
    Failed(StoreError),
}

/// Runs `work` in a short-lived thread whose working directory is `base`: the thread first
/// leaves the process-wide fs struct (`unshare(CLONE_FS)`), so its `chdir` moves no other
/// thread. Paths relative to `base` stay short whatever the root's length.
fn in_directory<T: Send>(base: &Path, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<T> {
                // SAFETY: unshare(CLONE_FS) only affects the calling thread's fs struct.
                if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                std::env::set_current_dir(base)?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("mount thread panicked")))
    })
}

/// `path` relative to `base` when it lies under it (fsconfig strings are limited to 255
/// bytes), else as is.
fn relative_to<'p>(path: &'p Path, base: &Path) -> &'p Path {
    match path.strip_prefix(base) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative,
        _ => path,
    }
}

fn mount_new_api(target: &Path, spec: &OverlaySpec<'_>) -> std::result::Result<(), NewApiError> {
    let outcome = in_directory(spec.base, || configure_and_mount(target, spec));
    match outcome {
        Ok(result) => result,
        Err(error) => Err(NewApiError::Failed(mount_error(
            target,
            spec,
            format!("enter {}", spec.base.display()),
            error,
        ))),
    }
}

fn configure_and_mount(
    target: &Path,
    spec: &OverlaySpec<'_>,
) -> std::result::Result<(), NewApiError> {
    let context = match fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(context) => context,
        Err(errno) if errno == rustix::io::Errno::NOSYS => {
            return Err(NewApiError::Unsupported(errno.into()))
        }
        Err(errno) => {
            return Err(NewApiError::Failed(mount_error(
                target,
                spec,
                "fsopen overlay".into(),
                errno.into(),
            )))
        }
    };
    let failed = |what: String, errno: rustix::io::Errno| {
        let log = context_log(&context);
        NewApiError::Failed(mount_error(
            target,
            spec,
            format!("{what}{log}"),
            errno.into(),
        ))
    };
    for (index, lower) in spec.lowers.iter().enumerate() {
        let lower = relative_to(lower, spec.base);
        if let Err(errno) = fsconfig_set_string(&context, "lowerdir+", lower) {
            if index == 0 && errno == rustix::io::Errno::INVAL {
                return Err(NewApiError::Unsupported(errno.into()));
            }
            return Err(failed(format!("lowerdir+ {}", lower.display()), errno));
        }
    }
    if let Some((upper, work)) = spec.upper_and_work {
        let upper = relative_to(upper, spec.base);
        let work = relative_to(work, spec.base);
        fsconfig_set_string(&context, "upperdir", upper)
            .map_err(|errno| failed(format!("upperdir {}", upper.display()), errno))?;
        fsconfig_set_string(&context, "workdir", work)
            .map_err(|errno| failed(format!("workdir {}", work.display()), errno))?;
    }
    for (key, value) in PORTABLE_OPTIONS {
        fsconfig_set_string(&context, key, value)
            .map_err(|errno| failed(format!("{key}={value}"), errno))?;
    }
    if spec.volatile && spec.upper_and_work.is_some() {
        // a kernel without it (before 5.10) gets a normal mount: only speed is lost
        let _ = rustix::mount::fsconfig_set_flag(&context, "volatile");
    }
    fsconfig_create(&context).map_err(|errno| failed("create".into(), errno))?;
    let attributes = if spec.upper_and_work.is_none() {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mount: OwnedFd = fsmount(&context, FsMountFlags::FSMOUNT_CLOEXEC, attributes)
        .map_err(|errno| failed("fsmount".into(), errno))?;
    move_mount(
        mount.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|errno| failed(format!("move_mount to {}", target.display()), errno))?;
    Ok(())
}

/// The messages the kernel left in a filesystem context (lines like `e overlay: ...`).
fn context_log(context: &OwnedFd) -> String {
    let mut messages = String::new();
    let mut buffer = [0u8; 1024];
    for _ in 0..16 {
        match rustix::io::read(context, &mut buffer) {
            Ok(read) if read > 0 => {
                messages.push_str("; ");
                messages.push_str(String::from_utf8_lossy(&buffer[..read]).trim());
            }
            _ => break,
        }
    }
    messages
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// Characters the legacy options parser treats specially.
fn needs_escaping(path: &str) -> bool {
    path.contains([',', ':', '\\', '='])
}

fn options_string(
    spec: &OverlaySpec<'_>,
    path: &dyn Fn(&Path) -> Option<String>,
) -> Option<String> {
    let mut lowers = Vec::with_capacity(spec.lowers.len());
    for lower in spec.lowers {
        lowers.push(path(lower)?);
    }
    let mut options = format!("lowerdir={}", lowers.join(":"));
    if let Some((upper, work)) = spec.upper_and_work {
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            path(upper)?,
            path(work)?
        ));
    }
    for (key, value) in PORTABLE_OPTIONS {
        options.push_str(&format!(",{key}={value}"));
    }
    if spec.volatile && spec.upper_and_work.is_some() {
        options.push_str(",volatile");
    }
    Some(options)
}

fn mount_legacy(target: &Path, spec: &OverlaySpec<'_>) -> Result<()> {
    let limit = page_size() - 1;
    let flags = if spec.upper_and_work.is_none() {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    let absolute = options_string(spec, &|path| {
        let text = path.to_str()?;
        (!needs_escaping(text)).then(|| text.to_string())
    });
    if let Some(options) = absolute.filter(|options| options.len() <= limit) {
        let options = CString::new(options).map_err(|_| {
            mount_error(
                target,
                spec,
                "path holds a NUL byte".into(),
                io::ErrorKind::InvalidInput.into(),
            )
        })?;
        return rustix::mount::mount("overlay", target, "overlay", flags, options.as_c_str())
            .map_err(|errno| {
                mount_error(
                    target,
                    spec,
                    "mount(2) with absolute paths".into(),
                    errno.into(),
                )
            });
    }
    let relative = options_string(spec, &|path| {
        let text = path.strip_prefix(spec.base).ok()?.to_str()?;
        (!needs_escaping(text) && !text.is_empty()).then(|| text.to_string())
    })
    .ok_or_else(|| {
        mount_error(
            target,
            spec,
            "a layer path is outside the snapshots directory or holds , : = or \\".into(),
            io::ErrorKind::InvalidInput.into(),
        )
    })?;
    if relative.len() > limit {
        return Err(StoreError::MountOptionsTooLong {
            layers: spec.lowers.len(),
            length: relative.len(),
            limit,
        });
    }
    let options = CString::new(relative).map_err(|_| {
        mount_error(
            target,
            spec,
            "path holds a NUL byte".into(),
            io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let result = in_directory(spec.base, || {
        rustix::mount::mount("overlay", target, "overlay", flags, options.as_c_str())
            .map_err(io::Error::from)
    });
    match result.and_then(|inner| inner) {
        Ok(()) => Ok(()),
        Err(error) => Err(mount_error(
            target,
            spec,
            "mount(2) with relative paths".into(),
            error,
        )),
    }
}

/// Unmounts `target`. A busy mount is retried for a while; then, if `detach`, it is detached
/// (lazily unmounted) instead of failing. A path that is not a mount point is fine.
pub(crate) fn unmount(target: &Path, detach: bool) -> Result<()> {
    for _ in 0..50 {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(rustix::io::Errno::BUSY) => std::thread::sleep(Duration::from_millis(20)),
            Err(errno) => {
                return Err(StoreError::Unmount {
                    target: target.to_path_buf(),
                    source: errno.into(),
                })
            }
        }
    }
    if detach {
        match rustix::mount::unmount(target, UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(errno) => Err(StoreError::Unmount {
                target: target.to_path_buf(),
                source: errno.into(),
            }),
        }
    } else {
        Err(StoreError::Unmount {
            target: target.to_path_buf(),
            source: rustix::io::Errno::BUSY.into(),
        })
    }
}

/// Mount points of this mount namespace under `prefix`, deepest first.
pub(crate) fn mount_points_under(prefix: &Path) -> Vec<PathBuf> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|path| path.starts_with(prefix) && path != prefix)
        .collect();
    found.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    found.dedup();
    found
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
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
            let value = (bytes[index + 1] - b'0') as u32 * 64
                + (bytes[index + 2] - b'0') as u32 * 8
                + (bytes[index + 3] - b'0') as u32;
            out.push(value as u8);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }
}
