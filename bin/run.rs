//! `infinity-run`: the command-line front end (argument parsing and reporting only).
//! `inspect FILE` lists the tensors of a checkpoint. Any failure is one line on stderr,
//! `error: <message>`, and exit code 2.

use std::error::Error;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use infinity::runtime::io::Weights;

#[derive(Parser)]
#[command(name = "infinity-run", version, about = "Infinity text-to-image inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a checkpoint (.safetensors or PyTorch .pth).
    ///
    /// One line per tensor (name, dtype, shape) in file order, then the tensor count and the
    /// total parameter count.
    Inspect {
        /// The checkpoint file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Inspect { file } => inspect(&file),
    };
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

fn inspect(file: &Path) -> Result<(), Box<dyn Error>> {
    let weights = Weights::open(file)?;
    let listing = listing(&weights);
    match io::stdout().lock().write_all(listing.as_bytes()) {
        // The reader stopped early (`| head`): not an error of ours.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `name  dtype  shape` in aligned columns, then `<n> tensors, <total> parameters`.
fn listing(weights: &Weights) -> String {
    let rows: Vec<(&str, &str, String)> =
        weights.iter().map(|(name, t)| (name, t.dtype().name(), format!("{:?}", t.shape()))).collect();
    let name_width = rows.iter().map(|(name, ..)| name.chars().count()).max().unwrap_or(0);
    let dtype_width = rows.iter().map(|(_, dtype, _)| dtype.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, dtype, shape) in rows {
        out += &format!("{name:<name_width$}  {dtype:<dtype_width$}  {shape}\n");
    }
    out += &format!("{} tensors, {} parameters\n", weights.len(), thousands(weights.total_params()));
    out
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
