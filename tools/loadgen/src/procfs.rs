//! What the load generator reads of the processes under test in `/proc`: their resident memory
//! and the CPU time they have used. Each figure is summed over the processes given, and is
//! `None` when there are none or one of them cannot be read (it exited): a partial sum would
//! read as a smaller figure.

use anyhow::{Context as _, bail};

/// VmRSS of processes, in KiB, summed.
pub fn rss_kib(pids: &[u32]) -> Option<u64> {
    sum(pids, |pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
}

/// Reads processes' CPU time: user + system time (fields 14 and 15 of `/proc/PID/stat`, every
/// thread of the process, in clock ticks).
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    ticks_per_sec: u64,
}

impl CpuTime {
    /// Learns the length of a clock tick (`getconf CLK_TCK`, normally 100 a second).
    pub fn new() -> anyhow::Result<Self> {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .context("cannot run getconf CLK_TCK")?;
        let ticks_per_sec: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("getconf CLK_TCK printed no number")?;
        if ticks_per_sec == 0 {
            bail!("getconf CLK_TCK printed 0");
        }
        Ok(Self { ticks_per_sec })
    }

    /// Seconds of CPU the processes have used so far, summed.
    pub fn secs(&self, pids: &[u32]) -> Option<f64> {
        let ticks = sum(pids, |pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat_ticks(&stat)
        })?;
        Some(ticks as f64 / self.ticks_per_sec as f64)
    }
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses, so fields are counted from its last `)`:
/// field 3 is the first after it.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn sum(pids: &[u32], read: impl Fn(u32) -> Option<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| read(pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_end_of_the_command_name() {
        let stat = "4242 (tokio (w) 1) S 1 4242 4242 0 -1 4194560 5129 0 0 0 731 269 0 0 20 0 \
                    9 0 1234 567890 1234 18446744073709551615";
        assert_eq!(stat_ticks(stat), Some(1000));
        assert_eq!(stat_ticks("4242 (cut short) S 1"), None);
    }

    #[test]
    fn this_process_is_read_and_a_missing_one_spoils_the_sum() {
        let me = std::process::id();
        let cpu = CpuTime::new().expect("getconf CLK_TCK");
        assert!(cpu.secs(&[me]).is_some());
        assert!(rss_kib(&[me]).is_some_and(|kib| kib > 0));
        assert_eq!(cpu.secs(&[me, u32::MAX]), None);
        assert_eq!(rss_kib(&[]), None);
    }
}
