//! The standard `process_*` metrics (the names Prometheus' client libraries use), read from
//! `/proc/self` at scrape time: CPU seconds, resident memory, start time, open and maximum
//! file descriptors. On a system without `/proc` nothing is written.

use std::fs;

use crate::{Encoder, Kind};

/// `USER_HZ`: the unit of `/proc/<pid>/stat` times. Linux fixes it at 100 for user space on
/// every architecture it ships (`sysconf(_SC_CLK_TCK)` returns this constant).
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: f64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: f64,
    /// Unix seconds the process started.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// The soft limit on file descriptors.
    pub max_fds: Option<f64>,
}

/// Reads the sample, or `None` where `/proc` is missing or unreadable.
pub fn read() -> Option<Sample> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is fields[N - 3].
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse::<f64>().ok() };
    let utime = field(14)?;
    let stime = field(15)?;
    let start_ticks = field(22)?;
    let virtual_bytes = field(23)?;
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())?;
    let boot_time = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())?;
    let open_fds = fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let max_fds = fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
    });
    Some(Sample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_bytes: rss_kib * 1024.0,
        virtual_bytes,
        start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
        open_fds,
        max_fds,
    })
}

/// Writes the `process_*` families.
pub fn render(out: &mut Encoder) {
    let Some(s) = read() else { return };
    out.single(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        Kind::Counter,
        s.cpu_seconds,
    );
    out.single(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        Kind::Gauge,
        s.resident_bytes,
    );
    out.single(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        Kind::Gauge,
        s.virtual_bytes,
    );
    out.single(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        Kind::Gauge,
        s.start_time_seconds,
    );
    out.single(
        "process_open_fds",
        "Number of open file descriptors.",
        Kind::Gauge,
        s.open_fds,
    );
    if let Some(max) = s.max_fds {
        out.single(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            Kind::Gauge,
            max,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_this_process() {
        let s = read().expect("/proc/self is readable on Linux");
        assert!(s.resident_bytes > 100_000.0, "{s:?}");
        assert!(s.open_fds >= 3.0, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        // Started within the last day, and not in the future (tick rounding aside).
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0,
            "{s:?}"
        );
        let mut e = Encoder::new();
        render(&mut e);
        let text = e.finish();
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
