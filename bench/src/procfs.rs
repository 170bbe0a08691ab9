//! What the tool reads from Linux's `/proc`: a process's CPU time (its own and the
//! server's, or the sum over several server processes: the nodes of one chat), a process's
//! memory, the whole machine's idle time; and the open-file limit, raised to the hard limit
//! so that thousands of sockets fit.

use std::fs;
use std::time::Duration;

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on every Linux we know).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Raises the soft open-file limit to the hard limit; returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard limit
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// CPU time a process has used, user and system, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// `pid` None reads the tool itself.
pub fn cpu_time(pid: Option<u32>) -> Option<CpuTime> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_stat(&fs::read_to_string(path).ok()?)
}

/// The CPU time of several processes together (the nodes of one chat); None when there
/// are none, or when one cannot be read (a node that died would make the sum a lie).
pub fn cpu_time_sum(pids: &[u32]) -> Option<CpuTime> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(CpuTime::default(), |sum, &pid| {
        let t = cpu_time(Some(pid))?;
        Some(CpuTime {
            user: sum.user + t.user,
            system: sum.system + t.system,
        })
    })
}

/// Fields 14 and 15 (utime, stime) of a `stat` line. The command name (field 2) may hold
/// spaces and parentheses, so counting starts after its last `)`.
fn parse_stat(stat: &str) -> Option<CpuTime> {
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_ascii_whitespace();
    // `after` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let tick = clock_ticks();
    let to = |t: u64| Duration::from_nanos(t * 1_000_000_000 / tick);
    Some(CpuTime {
        user: to(utime),
        system: to(stime),
    })
}

/// A process's resident memory now and at its peak, in KiB (`VmRSS`, `VmHWM`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The memory of several processes together: RSS summed, and the sum of their peaks (an
/// upper bound of the peak of the sum). None as with [`cpu_time_sum`].
pub fn memory_sum(pids: &[u32]) -> Option<Memory> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(Memory::default(), |sum, &pid| {
        let m = memory(pid)?;
        Some(Memory {
            rss_kib: sum.rss_kib + m.rss_kib,
            hwm_kib: sum.hwm_kib + m.hwm_kib,
        })
    })
}

fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// The whole machine's CPU time, busy and idle, in ticks (first line of `/proc/stat`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineTime {
    pub busy: u64,
    pub idle: u64,
}

pub fn machine_time() -> Option<MachineTime> {
    parse_proc_stat(&fs::read_to_string("/proc/stat").ok()?)
}

fn parse_proc_stat(text: &str) -> Option<MachineTime> {
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user).
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    let busy = v.iter().take(8).sum::<u64>() - idle;
    Some(MachineTime { busy, idle })
}

/// Datagrams the kernel dropped for want of socket buffer space, machine-wide
/// (`RcvbufErrors` + `SndbufErrors` of `/proc/net/snmp`): QUIC retransmits them, at a cost.
pub fn udp_buffer_errors() -> Option<u64> {
    parse_snmp(&fs::read_to_string("/proc/net/snmp").ok()?)
}

fn parse_snmp(text: &str) -> Option<u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let names: Vec<&str> = udp.next()?.split_ascii_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_ascii_whitespace().collect();
    let get =
        |name: &str| -> Option<u64> { values[names.iter().position(|n| *n == name)?].parse().ok() };
    Some(get("RcvbufErrors")? + get("SndbufErrors").unwrap_or(0))
}

/// The open-file limit of a process, from `/proc/PID/limits` (to warn before a run fails).
pub fn nofile_limit(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_past_odd_command_names() {
        let line = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        let cpu = parse_stat(line).unwrap();
        let tick = clock_ticks();
        assert_eq!(cpu.user, Duration::from_nanos(250 * 1_000_000_000 / tick));
        assert_eq!(cpu.system, Duration::from_nanos(50 * 1_000_000_000 / tick));
    }

    #[test]
    fn status_and_proc_stat_parse() {
        let m = parse_status("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n").unwrap();
        assert_eq!((m.rss_kib, m.hwm_kib), (1024, 2048));
        let t = parse_proc_stat("cpu  10 1 5 100 2 0 3 0 0 0\ncpu0 1 2\n").unwrap();
        assert_eq!((t.busy, t.idle), (19, 102));
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 10 0 3 9 3 1\n";
        assert_eq!(parse_snmp(snmp), Some(4));
    }

    #[test]
    fn own_process_is_readable() {
        assert!(cpu_time(None).is_some());
        assert!(memory(std::process::id()).unwrap().rss_kib > 0);
    }

    #[test]
    fn sums_over_processes_need_every_one() {
        let me = std::process::id();
        let one = memory_sum(&[me]).unwrap();
        assert!(one.rss_kib > 0);
        assert!(memory_sum(&[me, me]).unwrap().rss_kib > one.rss_kib);
        assert!(cpu_time_sum(&[me, me]).is_some());
        assert!(cpu_time_sum(&[]).is_none() && memory_sum(&[]).is_none());
        // No such process (pids are below 2^22 on Linux): the sum is unknown, not partial.
        assert!(cpu_time_sum(&[me, u32::MAX]).is_none());
        assert!(memory_sum(&[me, u32::MAX]).is_none());
    }
}
