//! What the command-line tools share: argument parsing with one-line errors, the one-line
//! `error:` exit and the peak-memory report.

use std::error::Error;
use std::io::{self, Write};
use std::process::ExitCode;

/// The command line of `args` parsed by clap. `--help` and `--version` print and exit 0 as
/// clap does; any other error of clap's (it adds a usage block and a hint over several lines)
/// becomes one line, `error: <what clap said, its lines joined>`, and exit code 2.
///
/// A negative number is a value on every (sub)command: `--tau -1` reaches the flag's own parse
/// or range check, which names the flag, instead of clap's "unexpected argument '-1'".
pub fn parse_args<T: clap::Parser, I: Into<std::ffi::OsString> + Clone>(
    args: impl IntoIterator<Item = I>,
) -> Result<T, ExitCode> {
    fn negatives_are_values(command: clap::Command) -> clap::Command {
        command.allow_negative_numbers(true).mut_subcommands(negatives_are_values)
    }
    let parsed = negatives_are_values(T::command())
        .try_get_matches_from(args)
        .and_then(|mut matches| T::from_arg_matches_mut(&mut matches));
    parsed.map_err(|e| {
        if !e.use_stderr() {
            e.exit();
        }
        let text = e.to_string();
        let said: Vec<&str> = text
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let _ = writeln!(io::stderr(), "error: {}", said.join(" ").trim_start_matches("error: "));
        ExitCode::from(2)
    })
}

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
