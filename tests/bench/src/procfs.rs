//! What the harness reads from /proc, and the file limit it raises.

use anyhow::{bail, Context};

/// Raises RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    let cur = lim.rlim_cur as u64;
    cur
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of one process (all its threads, live and exited) in seconds.
pub fn cpu_seconds_of(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces and parentheses: fields are counted after
    // the last ')'. Field 3 (state) is the first after it; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("malformed {path}");
    }
    let utime: f64 = fields[11].parse().context("utime")?;
    let stime: f64 = fields[12].parse().context("stime")?;
    Ok((utime + stime) / clock_ticks())
}

/// Summed over several processes.
pub fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|p| cpu_seconds_of(&p.to_string())).sum()
}

pub fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("self").unwrap_or(0.0)
}

/// VmRSS in KiB, summed over several processes.
pub fn vm_rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .with_context(|| format!("no VmRSS in {path}"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()
            .context("VmRSS value")?;
        total += kib;
    }
    Ok(total)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of both the latency timestamps and the timerfd.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec passed by pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU-seconds the whole machine spent busy (all CPUs, from the first line of /proc/stat).
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 8 {
        return 0.0;
    }
    (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / clock_ticks()
}

/// CPU use over a measuring window: the target's, the auxiliary processes', the load generator's
/// own, and everything else on the machine (other work running during a benchmark makes its
/// figures noise; `other_cpu_util` shows how much there was).
pub struct CpuWatch {
    target: Vec<u32>,
    aux: Vec<u32>,
    t0: f64,
    a0: f64,
    own0: f64,
    busy0: f64,
}

impl CpuWatch {
    pub fn start(target: &[u32], aux: &[u32]) -> anyhow::Result<Self> {
        Ok(Self {
            target: target.to_vec(),
            aux: aux.to_vec(),
            t0: cpu_seconds(target)?,
            a0: cpu_seconds(aux)?,
            own0: own_cpu_seconds(),
            busy0: machine_busy_seconds(),
        })
    }

    /// Ends the window: call right when it ends, the figures are taken here.
    pub fn stop(self, window: f64) -> anyhow::Result<CpuUse> {
        Ok(CpuUse {
            window,
            target: cpu_seconds(&self.target)? - self.t0,
            aux: cpu_seconds(&self.aux)? - self.a0,
            own: own_cpu_seconds() - self.own0,
            busy: machine_busy_seconds() - self.busy0,
            target_pids: self.target,
            aux_pids: self.aux,
        })
    }
}

/// CPU-seconds used during one window.
pub struct CpuUse {
    window: f64,
    pub target: f64,
    aux: f64,
    own: f64,
    busy: f64,
    target_pids: Vec<u32>,
    aux_pids: Vec<u32>,
}

impl CpuUse {
    /// Adds the `*_cpu_util` fields (1.0 = one CPU busy for the whole window) to `out`.
    pub fn fill(&self, out: &mut serde_json::Value) {
        let w = self.window.max(1e-9);
        out["loadgen_cpu_util"] = serde_json::json!(self.own / w);
        if !self.target_pids.is_empty() {
            out["target_pids"] = serde_json::json!(self.target_pids);
            out["target_cpu_s"] = serde_json::json!(self.target);
            out["target_cpu_util"] = serde_json::json!(self.target / w);
        }
        if !self.aux_pids.is_empty() {
            out["aux_pids"] = serde_json::json!(self.aux_pids);
            out["aux_cpu_util"] = serde_json::json!(self.aux / w);
        }
        out["machine_cpu_util"] = serde_json::json!(self.busy / w);
        let other = self.busy - self.target - self.aux - self.own;
        out["other_cpu_util"] = serde_json::json!((other / w).max(0.0));
    }
}
