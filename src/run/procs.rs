//! The process table as the kernel shows it (`/proc`), and what the loop does with it:
//! which processes belong to a session, signalling them, reaping what it adopted.
//!
//! - **Names.** A process is named by its pid and its start time (field 22 of
//!   `/proc/<pid>/stat`, clock ticks since boot): a pid the kernel reused later has
//!   another start time, so [`alive`] never mistakes a newcomer for a recorded process.
//! - **A session's processes** ([`Group`]): the command's process group (it leads one of
//!   its own), every descendant of a member (by parent pid), and any other process whose
//!   environment names the session (`PERPETUAL_SESSION`): the ones that `setsid` away and
//!   whose parent died, adopted by the loop as a child subreaper (or by init, while no
//!   loop ran). A group remembers each member it saw, so a member stays one after its
//!   parent is gone.
//! - **Strays** ([`Strays`]): a process adopted by the loop as a subreaper that no
//!   group can place (it left the group and the tree, and its parent died before a look
//!   saw it as a descendant; its environment names no session, e.g. `setsid env -i`).
//!   The kernel keeps no trace of where it came from, so at first sight it is given to
//!   every session that was running then and whose command started before it. Each
//!   of them counts it while its own command runs; a session whose command is gone
//!   leaves it to the others, and only the last one signals it, so a session never
//!   kills what may be another's, and nothing adopted outlives every possible owner.
//! - **Reaping.** [`set_child_subreaper`] makes the loop the parent of orphaned
//!   descendants; [`reap_strays`] collects the ones that exited. Leaders spawned through
//!   [`spawn_leader`] are left to their `std::process::Child`, and the loop's own
//!   short-lived children (git, the notify command) stay in its process group, which
//!   [`reap_strays`] never touches, so no one else's exit status is stolen.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::Mutex;

/// One line of the process table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Parent's pid.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session id (the kernel's, not perpetual's).
    pub sid: i32,
    /// `R`, `S`, `D`, `Z` (exited, not yet reaped), ...
    pub state: char,
    /// Start time, clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub start: u64,
}

impl Proc {
    /// Running or able to run: neither a zombie nor dead.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Proc> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field n is rest[n - 3].
    Some(Proc {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        sid: rest.get(3)?.parse().ok()?,
        start: rest.get(19)?.parse().ok()?,
    })
}

/// The process `pid` now, if it exists.
pub fn stat(pid: i32) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The process table as read at most `max_age` ago: the supervisors of several
/// sessions share one reading per poll instead of each reading `/proc` in full.
pub fn table_cached(max_age: std::time::Duration) -> std::sync::Arc<Vec<Proc>> {
    static CACHE: Mutex<Option<(std::time::Instant, std::sync::Arc<Vec<Proc>>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, t)) = cache.as_ref()
        && at.elapsed() <= max_age
    {
        return t.clone();
    }
    let t = std::sync::Arc::new(table());
    *cache = Some((std::time::Instant::now(), t.clone()));
    t
}

/// Every process now (those that vanish while being read are left out).
pub fn table() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// Whether the process named by `pid` and `start` is still running (a zombie is not).
pub fn alive(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|p| p.start == start && p.is_live())
}

/// The start time of `pid` (for recording it right after a spawn).
pub fn start_of(pid: i32) -> Option<u64> {
    stat(pid).map(|p| p.start)
}

/// The value of `key` in the environment `pid` was started with.
pub fn environ_var(pid: i32, key: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    bytes.split(|&b| b == 0).find_map(|var| {
        std::str::from_utf8(var)
            .ok()?
            .strip_prefix(&prefix)
            .map(str::to_string)
    })
}

/// Makes this process a child subreaper: its orphaned descendants (a session's children
/// whose parent exited, or that `setsid`-ed away) become its children instead of
/// init's, so the loop still sees, kills and reaps them.
#[cfg(target_os = "linux")]
pub fn set_child_subreaper() -> std::io::Result<()> {
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Not on this platform (the loop still kills process groups).
#[cfg(not(target_os = "linux"))]
pub fn set_child_subreaper() -> std::io::Result<()> {
    Ok(())
}

/// Sends `signal` to the process named by `pid` and `start`, unless it is gone (or the
/// pid now names another process). Returns whether it was sent.
pub fn signal(pid: i32, start: u64, signal: i32) -> bool {
    if stat(pid).is_none_or(|p| p.start != start) {
        return false;
    }
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Sends `signal` to every process of the group `pgid`.
pub fn signal_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

/// Session commands the loop spawned and whose exit status belongs to their `Child`.
static LEADERS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Spawns a session's command (which must ask for a process group of its own) and
/// registers it as a leader, under the lock [`reap_strays`] takes, so its exit status is
/// never reaped by anyone but its `Child`.
pub fn spawn_leader(cmd: &mut Command) -> std::io::Result<Child> {
    let mut leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    leaders.insert(child.id() as i32);
    Ok(child)
}

/// The leader's `Child` collected its exit status.
pub fn leader_reaped(pid: i32) {
    LEADERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
}

/// Reaps this process's exited children that are neither registered leaders nor in its
/// own process group: descendants of sessions it adopted as a subreaper. Returns their
/// pids.
pub fn reap_strays(table: &[Proc]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let my_group = unsafe { libc::getpgrp() };
    let leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    let mut reaped = Vec::new();
    let stray = |p: &Proc| p.ppid == me && p.state == 'Z' && p.pgid != my_group;
    for p in table {
        // `table` may be a moment old: look again before reaping.
        if stray(p)
            && !leaders.contains(&p.pid)
            && stat(p.pid).is_some_and(|now| now.start == p.start && stray(&now))
        {
            let mut status = 0;
            if unsafe { libc::waitpid(p.pid, &mut status, libc::WNOHANG) } == p.pid {
                reaped.push(p.pid);
            }
        }
    }
    reaped
}

/// In the environment of the commands the loop starts for itself (git, the notify
/// command): what they leave behind, adopted by the loop, is not a session's stray.
pub const LOOP_CHILD: &str = "PERPETUAL_LOOP_CHILD";

/// The sessions being followed and the strays they share: see the module documentation.
#[derive(Debug, Default)]
struct Strays {
    /// Session (by root and id) → its command's start time.
    live: HashMap<(String, String), u64>,
    /// A stray (pid, start) → the sessions it may belong to.
    owners: HashMap<(i32, u64), BTreeSet<(String, String)>>,
}

static STRAYS: Mutex<Option<Strays>> = Mutex::new(None);

fn with_strays<T>(f: impl FnOnce(&mut Strays) -> T) -> T {
    let mut guard = STRAYS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Strays::default))
}

/// The processes of one session: see the module documentation.
#[derive(Debug)]
pub struct Group {
    session: String,
    root: String,
    /// The process group the command leads.
    pub pgid: i32,
    leader: (i32, u64),
    leader_alive: bool,
    members: HashMap<i32, u64>,
    /// Whether a process (pid, start) names the session in its environment.
    named: HashMap<(i32, u64), bool>,
    /// Whether a process (pid, start) is a command perpetual runs for itself
    /// ([`LOOP_CHILD`]: a wrap's git), never one of the session's.
    loop_child: HashMap<(i32, u64), bool>,
    /// Strays found at the last scan that other running sessions may own too: counted,
    /// never signalled by this group.
    shared: HashSet<i32>,
}

impl Drop for Group {
    /// The session is no longer followed: its strays belong to the others that may own
    /// them (or to no one, once it was the last).
    fn drop(&mut self) {
        let key = (self.root.clone(), self.session.clone());
        with_strays(|st| {
            st.live.remove(&key);
            for owners in st.owners.values_mut() {
                owners.remove(&key);
            }
            st.owners.retain(|_, o| !o.is_empty());
        });
    }
}

impl Group {
    /// The group of the command `leader` (pid, start time) started for `session` of the
    /// root `root` (session ids are unique in a root only: both are checked).
    pub fn new(session: &str, root: &str, leader: i32, start: u64) -> Group {
        with_strays(|st| {
            st.live
                .insert((root.to_string(), session.to_string()), start);
        });
        Group {
            session: session.to_string(),
            root: root.to_string(),
            pgid: leader,
            leader: (leader, start),
            leader_alive: true,
            members: HashMap::from([(leader, start)]),
            named: HashMap::new(),
            loop_child: HashMap::new(),
            shared: HashSet::new(),
        }
    }

    /// The strays in `table` this session may own (see [`Strays`]), recording the ones
    /// seen for the first time; those other sessions may own too go in `self.shared`.
    fn strays(&mut self, table: &[Proc], me: i32, my_group: i32, set: &HashSet<i32>) -> Vec<Proc> {
        let leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
        let candidates: Vec<&Proc> = table
            .iter()
            .filter(|p| {
                p.ppid == me
                    && p.is_live()
                    && p.pgid != my_group
                    && !set.contains(&p.pid)
                    && !leaders.contains(&p.pid)
            })
            .collect();
        drop(leaders);
        self.shared.clear();
        if candidates.is_empty() {
            return Vec::new();
        }
        let key = (self.root.clone(), self.session.clone());
        let mut mine = Vec::new();
        with_strays(|st| {
            let live: Vec<_> = st.live.iter().map(|(k, v)| (k.clone(), *v)).collect();
            st.owners
                .retain(|(pid, start), _| table.iter().any(|p| p.pid == *pid && p.start == *start));
            for p in candidates {
                // One that names a session is that session's group's to find; one the
                // loop's own commands left is no session's.
                if environ_var(p.pid, "PERPETUAL_SESSION").is_some()
                    || environ_var(p.pid, LOOP_CHILD).is_some()
                {
                    continue;
                }
                let owners = st.owners.entry((p.pid, p.start)).or_insert_with(|| {
                    let started_before: BTreeSet<_> = live
                        .iter()
                        .filter(|(_, leader_start)| *leader_start <= p.start)
                        .map(|(k, _)| k.clone())
                        .collect();
                    if started_before.is_empty() {
                        live.iter().map(|(k, _)| k.clone()).collect()
                    } else {
                        started_before
                    }
                });
                if owners.contains(&key) {
                    if owners.len() > 1 && !self.leader_alive {
                        // This session's command is gone: what it may have left goes to
                        // the others still running, the last of which ends it (two
                        // sessions waiting for each other to end would wait forever).
                        owners.remove(&key);
                        continue;
                    }
                    if owners.len() > 1 {
                        self.shared.insert(p.pid);
                    }
                    mine.push(*p);
                }
            }
        });
        mine
    }

    /// The group of a session a previous loop started: besides the leader's process
    /// group, every live process whose environment names the session (read once here:
    /// what `setsid`-ed away while no loop was there to adopt it).
    pub fn adopted(session: &str, root: &str, leader: i32, start: u64, table: &[Proc]) -> Group {
        let mut g = Group::new(session, root, leader, start);
        for p in table.iter().filter(|p| p.is_live()) {
            if g.names_session(p) {
                g.members.insert(p.pid, p.start);
            }
        }
        g
    }

    fn names_session(&mut self, p: &Proc) -> bool {
        let (session, root) = (&self.session, &self.root);
        *self.named.entry((p.pid, p.start)).or_insert_with(|| {
            environ_var(p.pid, "PERPETUAL_SESSION").as_deref() == Some(session.as_str())
                && environ_var(p.pid, "PERPETUAL_ROOT").as_deref() == Some(root.as_str())
        }) && !self.is_loop_child(p)
    }

    /// A git a session's wrap started (see [`LOOP_CHILD`]): left to finish, never
    /// signalled with the session; once its parent is gone the loop adopts and reaps it.
    fn is_loop_child(&mut self, p: &Proc) -> bool {
        *self
            .loop_child
            .entry((p.pid, p.start))
            .or_insert_with(|| environ_var(p.pid, LOOP_CHILD).is_some())
    }

    /// The session's live processes in `table`, remembering new members. `me` is this
    /// process (the subreaper), `my_group` its process group (its own short-lived
    /// children, git and the notify command, are never a session's).
    ///
    /// While the leader lives, its process group is the session's. Once it is gone the
    /// group id may, after every member left, name someone else's group (pids are
    /// reused): a process found by its group alone must then name the session in its
    /// environment.
    pub fn scan(&mut self, table: &[Proc], me: i32, my_group: i32) -> Vec<Proc> {
        let by_pid: HashMap<i32, &Proc> = table.iter().map(|p| (p.pid, p)).collect();
        self.leader_alive = by_pid
            .get(&self.leader.0)
            .is_some_and(|p| p.start == self.leader.1 && p.is_live());
        // Members that are gone, or whose pid was reused, are forgotten.
        self.members
            .retain(|pid, start| by_pid.get(pid).is_some_and(|p| p.start == *start));
        self.named
            .retain(|(pid, start), _| by_pid.get(pid).is_some_and(|p| p.start == *start));
        self.loop_child
            .retain(|(pid, start), _| by_pid.get(pid).is_some_and(|p| p.start == *start));
        let mut set: HashSet<i32> = self.members.keys().copied().collect();
        for p in table {
            if set.contains(&p.pid) {
                continue;
            }
            let in_group = p.pgid == self.pgid && (self.leader_alive || self.names_session(p));
            // Outside the group and the tree: what left both (`setsid`, a double fork)
            // and lost its parent, adopted by this loop as a subreaper, or by another
            // process (or init) when the loop that started it had died. Its environment
            // says whose it is; each process's is read once (`named` remembers).
            let orphan = !in_group
                && p.is_live()
                && p.pgid != my_group
                && p.pid != me
                && p.ppid != 2
                && self.names_session(p);
            if in_group || orphan {
                set.insert(p.pid);
                self.members.insert(p.pid, p.start);
            }
        }
        // Adopted by this loop with nothing to say whose they are: strays. Not remembered
        // as members (ownership is decided again at each look, as other sessions end).
        for p in self.strays(table, me, my_group, &set) {
            set.insert(p.pid);
        }
        // Descendants of members, however deep (children are listed after parents only
        // by chance, so iterate to a fixed point).
        loop {
            let mut grew = false;
            for p in table {
                if !set.contains(&p.pid) && set.contains(&p.ppid) && !self.is_loop_child(p) {
                    set.insert(p.pid);
                    // A shared stray's descendants are shared too.
                    if self.shared.contains(&p.ppid) {
                        self.shared.insert(p.pid);
                    } else {
                        self.members.insert(p.pid, p.start);
                    }
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        table
            .iter()
            .filter(|p| set.contains(&p.pid) && p.is_live())
            .copied()
            .collect()
    }

    /// Sends `sig` to each of `live` (checked by start time), and to the process group
    /// while its leader lives (then the group is surely the session's).
    pub fn signal(&self, live: &[Proc], sig: i32) {
        if self.leader_alive {
            signal_group(self.pgid, sig);
        }
        for p in live.iter().filter(|p| !self.shared.contains(&p.pid)) {
            signal(p.pid, p.start, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_command_names() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let p = parse_stat(line).unwrap();
        assert_eq!(
            (p.pid, p.state, p.ppid, p.pgid, p.sid, p.start),
            (4242, 'S', 1, 4242, 4242, 987654)
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn this_process_is_in_the_table_with_its_start_time() {
        let me = std::process::id() as i32;
        let p = stat(me).unwrap();
        assert!(p.is_live());
        assert!(alive(me, p.start));
        assert!(
            !alive(me, p.start + 1),
            "another start time is another process"
        );
        assert!(table().iter().any(|q| q.pid == me));
    }
}
