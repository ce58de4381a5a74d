//! What the command-line tools share: the one-line `error:` exit and the peak-memory report.

use std::error::Error;
use std::io::{self, Write};
use std::process::ExitCode;

/// Success, or the error as one line on stderr, `error: <message>`, and exit code 2.
pub fn exit_code(result: Result<(), Box<dyn Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line whatever the message holds, so scripts can grep it; if stderr itself is
            // gone there is nobody left to tell.
            let _ = writeln!(io::stderr(), "error: {}", e.to_string().replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

/// Peak resident memory of this process in MiB (Linux), if the kernel tells.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
