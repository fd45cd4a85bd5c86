//! What the user sees on stderr: logs, errors, progress.

pub mod progress;

use std::io::IsTerminal;

/// Log level from `-v`/`-q`, overridable with `ALMAVMM_LOG` (a tracing filter such as
/// `almavmm_host=debug`).
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALMAVMM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color_enabled())
        .with_target(false)
        .without_time()
        .try_init();
}

/// Colours only on a terminal, and never when `NO_COLOR` is set (no-color.org).
pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// The same rule for what goes to stdout (tables such as doctor's).
pub fn stdout_color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// Print an error and its causes, one per line, the way a user reads them.
pub fn print_error(err: &anyhow::Error) {
    let prefix = if color_enabled() { "\x1b[1;31merror:\x1b[0m" } else { "error:" };
    eprintln!("{prefix} {err}");
    // Our error messages usually end with their cause already ("…: No such file…"):
    // print a cause only when it adds something.
    let mut shown = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        shown = text;
    }
}

/// Bytes in binary units, as `ls -h` would print them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
    }
}
