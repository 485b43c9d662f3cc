//! Whether the process that holds a lease is still alive: pid, its start time and the boot id.

use std::fs;

/// Identifies one process over the lifetime of the machine: a pid alone can be reused, a pid
/// with its start time (clock ticks since boot) and the boot id cannot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_time: u64,
    pub boot_id: String,
}

impl ProcessIdentity {
    /// The identity of the calling process.
    pub fn current() -> Self {
        let pid = std::process::id();
        ProcessIdentity {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            boot_id: boot_id(),
        }
    }

    /// Whether this process is still running. A process of another boot is dead; a pid that
    /// now belongs to a process with another start time is dead.
    pub fn is_alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        match start_time(self.pid) {
            Some(start_time) => start_time == self.start_time,
            None => false,
        }
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
/// `None` if there is no such process (or it is a zombie whose stat is gone).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
    // the fields after it start after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // after_name starts at field 3 (state); start time is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

pub(crate) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|text| text.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_dead_one_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let mut other_start = me.clone();
        other_start.start_time += 1;
        assert!(!other_start.is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = child.id();
        child.wait().unwrap();
        let dead = ProcessIdentity {
            pid: child_pid,
            start_time: 1,
            boot_id: me.boot_id.clone(),
        };
        assert!(!dead.is_alive());
    }
}
