//! Keeping timings clean: a 2-core machine shared with builds gives garbage numbers. A monitor
//! thread watches the CPU time of every process outside the bench's own process tree (the bench,
//! the daemon it started, the raw ORT script); a measurement that overlaps a busy window is
//! repeated once the machine is quiet again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::report::run_capture;

/// One process as /proc/PID/stat describes it.
struct Proc {
    comm: String,
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

fn read_procs() -> BTreeMap<u32, Proc> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // rest[0] = state, [1] = ppid, [11] = utime, [12] = stime
        if rest.len() < 13 {
            continue;
        }
        let (Ok(ppid), Ok(u), Ok(st)) = (rest[1].parse::<u32>(), rest[11].parse::<u64>(), rest[12].parse::<u64>()) else { continue };
        out.insert(pid, Proc { comm: stat[open + 1..close].to_string(), ppid, ticks: u + st });
    }
    out
}

/// Whether `pid` is the bench itself or one of its descendants.
fn is_ours(pid: u32, procs: &BTreeMap<u32, Proc>, me: u32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        if p == me {
            return true;
        }
        match procs.get(&p) {
            Some(pr) if pr.ppid != 0 && pr.ppid != p => p = pr.ppid,
            _ => return false,
        }
    }
    false
}

/// CPU used by processes outside the bench's tree over `window`, as a fraction of one core,
/// with the biggest users.
fn foreign_cpu(window: Duration, tick_hz: f64) -> (f64, String) {
    let me = std::process::id();
    let a = read_procs();
    std::thread::sleep(window);
    let b = read_procs();
    let mut users: Vec<(u64, String)> = Vec::new();
    let mut total = 0u64;
    for (pid, pr) in &b {
        // Kernel threads (children of kthreadd) and our own tree don't count.
        if *pid == 2 || pr.ppid == 2 || is_ours(*pid, &b, me) {
            continue;
        }
        let before = a.get(pid).filter(|x| x.comm == pr.comm).map(|x| x.ticks).unwrap_or(0);
        let d = pr.ticks.saturating_sub(before);
        if d > 0 {
            total += d;
            users.push((d, format!("{}[{pid}]", pr.comm)));
        }
    }
    users.sort_by_key(|u| std::cmp::Reverse(u.0));
    let top: Vec<String> =
        users.iter().take(3).map(|(d, n)| format!("{n} {:.0}%", 100.0 * *d as f64 / tick_hz / window.as_secs_f64())).collect();
    (total as f64 / tick_hz / window.as_secs_f64(), top.join(", "))
}

fn clock_ticks_per_second() -> f64 {
    run_capture("getconf", &["CLK_TCK"]).and_then(|s| s.parse().ok()).unwrap_or(100.0)
}

/// Foreign CPU above this fraction of one core marks a window as busy.
const FOREIGN_LIMIT: f64 = 0.10;

/// Background watcher of foreign CPU use, in back-to-back windows.
#[derive(Clone)]
pub struct Monitor {
    /// Busy windows: (start, end, description).
    busy: Arc<Mutex<Vec<(Instant, Instant, String)>>>,
    /// End of the last completed window.
    last_end: Arc<Mutex<Instant>>,
}

impl Monitor {
    const WINDOW: Duration = Duration::from_millis(500);

    pub fn start(tick_hz: f64) -> Monitor {
        let m = Monitor { busy: Arc::new(Mutex::new(Vec::new())), last_end: Arc::new(Mutex::new(Instant::now())) };
        let mm = m.clone();
        std::thread::spawn(move || {
            loop {
                let start = Instant::now();
                let (cpu, who) = foreign_cpu(Self::WINDOW, tick_hz);
                let end = Instant::now();
                if cpu > FOREIGN_LIMIT {
                    let mut b = mm.busy.lock().expect("monitor");
                    b.push((start, end, format!("other processes used {:.0}% of a core: {who}", cpu * 100.0)));
                    let n = b.len();
                    if n > 1000 {
                        b.drain(..n - 1000);
                    }
                }
                *mm.last_end.lock().expect("monitor") = end;
            }
        });
        m
    }

    /// Why the interval [from, to] was disturbed, if it was; waits until the monitor has
    /// looked at all of it.
    async fn disturbed(&self, from: Instant, to: Instant) -> Option<String> {
        let give_up = Instant::now() + Duration::from_secs(3);
        while *self.last_end.lock().expect("monitor") < to && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.busy.lock().expect("monitor").iter().find(|(s, e, _)| *e >= from && *s <= to).map(|(_, _, w)| w.clone())
    }
}

/// Waits until processes outside the bench use (almost) no CPU. Returns whether it got quiet.
pub fn wait_for_quiet(timeout: Duration, tick_hz: f64) -> bool {
    let start = Instant::now();
    let mut last_note: Option<Instant> = None;
    let mut quiet_windows = 0;
    loop {
        let (cpu, who) = foreign_cpu(Duration::from_millis(700), tick_hz);
        if cpu <= FOREIGN_LIMIT {
            quiet_windows += 1;
            // Builds go quiet between crates: ask for a few quiet windows in a row after a busy spell.
            if last_note.is_none() || quiet_windows >= 4 {
                if last_note.is_some() {
                    eprintln!("  machine is quiet again");
                }
                return true;
            }
            continue;
        }
        quiet_windows = 0;
        if start.elapsed() >= timeout {
            eprintln!("  WARNING: machine still busy after {timeout:?} ({:.0}% of a core: {who}); measuring anyway", cpu * 100.0);
            return false;
        }
        if last_note.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            eprintln!("  waiting for the machine to go quiet (other processes use {:.0}% of a core: {who})...", cpu * 100.0);
            last_note = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// What every measurement needs to keep itself clean.
pub struct BenchEnv {
    monitor: Monitor,
    tick_hz: f64,
    quiet_timeout: Duration,
    /// Most runs of one measurement.
    pub attempts: usize,
    /// Measurements that stayed disturbed.
    pub disturbed: Mutex<Vec<String>>,
}

impl BenchEnv {
    /// Starts the monitor thread.
    pub fn new(quiet_timeout: Duration, attempts: usize) -> BenchEnv {
        let tick_hz = clock_ticks_per_second();
        BenchEnv { monitor: Monitor::start(tick_hz), tick_hz, quiet_timeout, attempts, disturbed: Mutex::new(Vec::new()) }
    }

    /// Waits for the machine to go quiet before `label` starts; notes it if it never did.
    pub fn quiet(&self, label: &str) {
        if !wait_for_quiet(self.quiet_timeout, self.tick_hz) {
            self.disturbed.lock().expect("disturbed").push(format!("{label}: machine not quiet at the start"));
        }
    }
}

/// Runs a measurement until it runs undisturbed (at most `attempts` times). Returns the value,
/// the attempts used and whether the kept one was clean.
pub async fn measured<T, F, Fut>(env: &BenchEnv, label: &str, mut f: F) -> Result<(T, usize, bool)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let from = Instant::now();
        let v = f().await?;
        let to = Instant::now();
        match env.monitor.disturbed(from, to).await {
            None => return Ok((v, attempt, true)),
            Some(why) => {
                if attempt >= env.attempts {
                    eprintln!("  WARNING: {label} disturbed on all {attempt} attempts ({why}); keeping the last one");
                    env.disturbed.lock().expect("disturbed").push(format!("{label}: {why}"));
                    return Ok((v, attempt, false));
                }
                eprintln!("  {label} was disturbed ({why}); repeating it once the machine is quiet");
                wait_for_quiet(env.quiet_timeout, env.tick_hz);
            }
        }
    }
}
