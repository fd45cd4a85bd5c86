//! The human form of a doctor report: one line per check, grouped, with the fix under any
//! check that is not ok; colours only when asked for (a terminal without NO_COLOR).

use super::{Report, Status};

fn paint(s: &str, status: Status, color: bool) -> String {
    if !color {
        return s.to_string();
    }
    let code = match status {
        Status::Ok => "32",
        Status::Warn => "33",
        Status::Fail => "1;31",
        Status::Skip => "2",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

fn word(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
        Status::Skip => "skip",
    }
}

pub fn render(report: &Report, color: bool) -> String {
    let mut out = String::new();
    let width = report.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
    let title = match &report.guest {
        Some(g) => format!("doctor: {g}\n"),
        None => "doctor: host\n".to_string(),
    };
    out.push_str(&title);
    for c in &report.checks {
        let tag = format!("{:<4}", word(c.status));
        out.push_str(&format!("  {} {:<width$}  {}\n", paint(&tag, c.status, color), c.id, c.finding));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("  {:<4} {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    out.push_str(&format!("{} ok, {} warn, {} fail\n", report.ok, report.warn, report.fail));
    out
}
