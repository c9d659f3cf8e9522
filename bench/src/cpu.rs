//! CPU time and memory of this process and its threads (Linux).

use std::time::Duration;

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

fn rusage(who: libc::c_int) -> Result<libc::rusage, String> {
    // SAFETY: getrusage writes a `rusage` into the zeroed struct we own; no other memory is touched.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    if rc == 0 {
        Ok(usage)
    } else {
        Err(format!("getrusage: {}", std::io::Error::last_os_error()))
    }
}

/// User + system CPU time of the whole process so far (`getrusage(RUSAGE_SELF)`).
pub fn process_cpu() -> Result<Duration, String> {
    let u = rusage(libc::RUSAGE_SELF)?;
    Ok(timeval(u.ru_utime) + timeval(u.ru_stime))
}

/// User + system CPU time of the calling thread so far (`getrusage(RUSAGE_THREAD)`).
pub fn thread_cpu() -> Result<Duration, String> {
    let u = rusage(libc::RUSAGE_THREAD)?;
    Ok(timeval(u.ru_utime) + timeval(u.ru_stime))
}

/// CPU time so far of this process's threads whose name starts with `prefix`, from
/// `/proc/self/task/*/schedstat` (nanoseconds on CPU). Threads that ended are not counted,
/// so use it for long-lived threads (the runtimes' workers).
pub fn named_threads_cpu(prefix: &str) -> Result<Duration, String> {
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        let nanos: u64 = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{}: unexpected schedstat {schedstat:?}", path.display()))?;
        total += Duration::from_nanos(nanos);
    }
    Ok(total)
}

/// A `/proc/<pid>/status` field in kibibytes (e.g. `VmHWM`, the peak RSS).
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("{path}: no {field}"))
}
