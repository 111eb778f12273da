//! Reading a process's CPU time and memory from /proc.

/// A CPU-time reading of a process: clock ticks from /proc/<pid>/stat (every thread that
/// ever ran, 10 ms resolution) and nanoseconds from /proc/<pid>/task/*/schedstat (threads
/// alive now, exact).
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    ticks: f64,
    sched: Option<f64>,
}

impl Cpu {
    /// Reads `pid`'s CPU time.
    pub fn read(pid: &str) -> Option<Cpu> {
        Some(Cpu {
            ticks: cpu_seconds(pid)?,
            sched: sched_seconds(pid),
        })
    }

    /// The summed CPU time of every process in `pids`; `None` when there is none, or one
    /// of them cannot be read (a partial sum would understate the cost).
    pub fn read_all(pids: &[String]) -> Option<Cpu> {
        let mut sum: Option<Cpu> = None;
        for pid in pids {
            let c = Cpu::read(pid)?;
            sum = Some(match sum {
                None => c,
                Some(s) => Cpu {
                    ticks: s.ticks + c.ticks,
                    sched: s.sched.zip(c.sched).map(|(a, b)| a + b),
                },
            });
        }
        sum
    }

    /// Seconds of CPU from `earlier` to `self`: the exact schedstat difference when it
    /// agrees with the tick count (no thread with CPU time exited in between), else ticks.
    pub fn since(&self, earlier: &Cpu) -> f64 {
        let ticks = self.ticks - earlier.ticks;
        match (self.sched, earlier.sched) {
            (Some(a), Some(b)) => {
                let exact = a - b;
                let tick = 1.0 / clock_ticks();
                if exact >= 0.0 && (exact - ticks).abs() <= 2.0 * tick + 0.05 * ticks {
                    exact
                } else {
                    ticks
                }
            }
            _ => ticks,
        }
    }
}

/// Sum of the on-CPU nanoseconds of `pid`'s live threads, in seconds.
fn sched_seconds(pid: &str) -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may exit between listing and reading: skip it.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total as f64 / 1e9)
}

/// CPU time (user + system, all threads, seconds) of `pid`, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after "(comm) ".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size over the process's life (VmHWM).
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM of `pid`, from /proc/<pid>/status.
pub fn memory(pid: &str) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut m = Memory::default();
    for line in status.lines() {
        let field = |l: &str| -> u64 {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            m.rss_kib = field(line);
        } else if line.starts_with("VmHWM:") {
            m.hwm_kib = field(line);
        }
    }
    Some(m)
}

/// The summed memory of every process in `pids` (resident sizes and peaks each added up);
/// `None` when there is none, or one of them cannot be read.
pub fn memory_all(pids: &[String]) -> Option<Memory> {
    let mut sum: Option<Memory> = None;
    for pid in pids {
        let m = memory(pid)?;
        let s = sum.unwrap_or_default();
        sum = Some(Memory {
            rss_kib: s.rss_kib + m.rss_kib,
            hwm_kib: s.hwm_kib + m.hwm_kib,
        });
    }
    sum
}

/// Raises this process's open-file limit to its hard limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    let cur = lim.rlim_cur as u64;
    cur
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_self() {
        let me = std::process::id().to_string();
        assert!(super::cpu_seconds(&me).is_some());
        let a = super::Cpu::read(&me).unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let b = super::Cpu::read(&me).unwrap();
        assert!(b.since(&a) >= 0.0);
        let m = super::memory(&me).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
    }

    #[test]
    fn sums_several() {
        let me = std::process::id().to_string();
        let one = super::Cpu::read_all(std::slice::from_ref(&me)).unwrap();
        let two = super::Cpu::read_all(&[me.clone(), me.clone()]).unwrap();
        assert!(two.ticks >= 2.0 * one.ticks);
        assert!(super::Cpu::read_all(&[]).is_none());
        assert!(super::Cpu::read_all(&[me.clone(), "0".into()]).is_none());
        let m1 = super::memory_all(std::slice::from_ref(&me)).unwrap();
        let m2 = super::memory_all(&[me.clone(), me]).unwrap();
        assert!(m2.rss_kib > m1.rss_kib);
        assert!(super::memory_all(&[]).is_none());
    }
}
