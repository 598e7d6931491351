//! The `process_*` metrics, named as the Prometheus client libraries name them, read from
//! `/proc/self` (Linux only; elsewhere they are left out).
//!
//! The relay raises its open-file limit for its clients, so `process_open_fds` against
//! `process_max_fds` is the figure an operator watches.

use std::fmt::Write;

/// Kernel clock ticks per second as `/proc` reports CPU times (`USER_HZ`): 100 on every Linux
/// architecture the relay runs on.
const TICKS_PER_SECOND: f64 = 100.0;
/// Bytes per page for `/proc/self/statm` sizes is not needed: RSS comes from `status` in kB.
const KIB: f64 = 1024.0;

/// What `/proc` says about this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) start_time_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<f64>,
    pub(crate) open_fds: Option<u64>,
    pub(crate) max_fds: Option<u64>,
}

/// CPU seconds (user + system) and the start time in ticks after boot, from `/proc/self/stat`.
/// The command name (field 2) is in parentheses and may hold spaces, so fields are counted
/// after its closing parenthesis.
fn parse_stat(stat: &str) -> Option<(f64, u64)> {
    let after_name = stat.get(stat.rfind(')')?.checked_add(1)?..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: field 3 (state) is index 0, so field N is index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start_ticks: u64 = fields.get(19)?.parse().ok()?;
    Some((
        utime.saturating_add(stime) as f64 / TICKS_PER_SECOND,
        start_ticks,
    ))
}

/// The boot time (`btime`, Unix seconds) from `/proc/stat`.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// `VmRSS` from `/proc/self/status`, in bytes.
fn parse_resident(status: &str) -> Option<f64> {
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * KIB)
}

/// The soft "Max open files" limit from `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl ProcessStats {
    /// Reads this process's figures; any that cannot be read are `None`.
    pub(crate) fn read() -> ProcessStats {
        if !cfg!(target_os = "linux") {
            return ProcessStats::default();
        }
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").as_deref().and_then(parse_stat);
        let boot = read("/proc/stat").as_deref().and_then(parse_boot_time);
        ProcessStats {
            cpu_seconds: stat.map(|(cpu, _)| cpu),
            start_time_seconds: stat
                .zip(boot)
                .map(|((_, ticks), boot)| boot as f64 + ticks as f64 / TICKS_PER_SECOND),
            resident_bytes: read("/proc/self/status")
                .as_deref()
                .and_then(parse_resident),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: read("/proc/self/limits").as_deref().and_then(parse_max_fds),
        }
    }

    /// The Prometheus text for the figures that could be read.
    pub(crate) fn render(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                let _ = writeln!(out, "{name} {value}");
            }
        };
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.map(|value| value.to_string()),
        );
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds.map(|value| value.to_string()),
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.map(|value| value.to_string()),
        );
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.map(|value| value.to_string()),
        );
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            self.max_fds.map(|value| value.to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_even_with_spaces_in_the_command_name() {
        let stat = "4242 (tick wire) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 \
                    3 0 123456 10000000 2000 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((3.0, 123_456)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_resident("Name:\ttickwire\nVmRSS:\t   20480 kB\n"),
            Some(20_480.0 * 1024.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            2088                 4096                 files\n";
        assert_eq!(parse_max_fds(limits), Some(2_088));
        assert_eq!(
            parse_max_fds("Max open files unlimited unlimited files"),
            None
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_reads_as_alive() {
        let stats = ProcessStats::read();
        assert!(stats.open_fds.is_some_and(|fds| fds >= 3), "{stats:?}");
        assert!(
            stats
                .max_fds
                .is_some_and(|max| max >= stats.open_fds.unwrap_or(0))
        );
        assert!(stats.resident_bytes.is_some_and(|rss| rss > 0.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = stats.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 3_600.0,
            "{started} vs {now}"
        );
        let mut out = String::new();
        stats.render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(out.contains(&format!("\n{name} ")), "{name} in {out}");
        }
    }
}
