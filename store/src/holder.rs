//! Which process holds something (a lease, an upload, a scratch folder), recorded so that a
//! later run on the same machine can tell that the holder died (SIGKILL, power loss) and clean
//! up after it at once, instead of waiting for an expiry.
//!
//! A process is named by the kernel's boot id with its pid namespace, its pid and its start
//! time (in clock ticks since boot, from `/proc/<pid>/stat`): a pid reused by a later process
//! has another start time, and after a reboot every holder of the old boot is dead. A holder
//! on another machine (another boot id), or in another pid namespace of this one (another
//! container, whose pids this process cannot see), is never judged dead here; its expiry
//! decides.

use serde::{Deserialize, Serialize};

/// A process, as recorded in what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `/proc/sys/kernel/random/boot_id` of its machine, then `.` and the inode of its pid
    /// namespace: where its pid means something.
    pub boot: String,
    /// Its process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot.
    pub start: u64,
}

/// The boot id and the pid namespace this process sees pids in (`<boot id>.<inode>`).
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    // The link reads `pid:[4026531836]`.
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let namespace = namespace.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?;
    Some(format!("{}.{namespace}", id.trim()))
}

/// The start time of process `pid`, or `None` when there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; field 22 is the start
    // time, the 20th after the closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

impl Holder {
    /// This process; `None` where `/proc` does not say (then only expiries apply).
    pub fn current() -> Option<Holder> {
        let pid = std::process::id();
        Some(Holder { boot: boot_id()?, pid, start: start_time(pid)? })
    }

    /// True only when the holder ran on this machine since its last boot and is gone.
    pub fn is_dead(&self) -> bool {
        boot_id().is_some_and(|boot| boot == self.boot) && start_time(self.pid) != Some(self.start)
    }

    /// A name for files and keys, unique among processes of all boots of all machines:
    /// `<boot>-<pid>-<start>`.
    pub fn file_name(&self) -> String {
        format!("{}-{}-{}", &self.boot, self.pid, self.start)
    }

    /// The holder a [`Holder::file_name`] names.
    pub fn from_file_name(name: &str) -> Option<Holder> {
        let mut parts = name.rsplitn(3, '-');
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let boot = parts.next()?.to_string();
        Some(Holder { boot, pid, start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_finished_child_is_dead() {
        let me = Holder::current().unwrap();
        assert!(!me.is_dead());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        child.wait().unwrap();
        if let Some(start) = start {
            assert!(Holder { pid, start, ..me.clone() }.is_dead());
        }
        assert!(Holder { start: me.start + 1, ..me.clone() }.is_dead(), "a reused pid");
        assert!(!Holder { boot: "another machine".into(), pid, start: 0 }.is_dead());
        // This machine, but another pid namespace (another container): its pids are not ours
        // to look up, so even a pid that is free here does not make it dead.
        let (boot, namespace) = me.boot.rsplit_once('.').unwrap();
        assert!(namespace.parse::<u64>().is_ok(), "{}", me.boot);
        let elsewhere = format!("{boot}.1");
        assert!(!Holder { boot: elsewhere, pid, start: start.unwrap_or(0) }.is_dead());
        assert_eq!(Holder::from_file_name(&me.file_name()), Some(me));
    }
}
