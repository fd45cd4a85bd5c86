//! `/var/lib/almavmm/clock-events.jsonl`: one [`ClockEvent`] per line, newest last, kept
//! under [`MAX_BYTES`] by dropping the oldest lines. Each event is one `write` on an
//! `O_APPEND` file, so the watcher and a `clock check` run by a hook never interleave
//! within a line.

use std::io::{self, Write};

use almavmm_shared::health::{ClockEvent, ClockEventKind};
use almavmm_shared::paths;

use crate::sys::sysroot::SysRoot;

/// Past this the file is cut to its newest half.
pub const MAX_BYTES: u64 = 256 * 1024;

pub fn event(kind: ClockEventKind, offset_ns: Option<i64>, detail: impl Into<String>) -> ClockEvent {
    ClockEvent { at_ns: crate::clock::timekeeping::realtime_ns(), kind, offset_ns, detail: detail.into() }
}

/// Append one event, then trim when over the bound.
pub fn append(root: &SysRoot, ev: &ClockEvent) -> io::Result<()> {
    let path = root.path(paths::CLOCK_EVENTS);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(ev).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    f.write_all(&line)?;
    if f.metadata()?.len() > MAX_BYTES {
        let text = std::fs::read(&path)?;
        almavmm_shared::atomic::write_atomic(&path, keep_newest(&text, (MAX_BYTES / 2) as usize), 0o644)?;
    }
    Ok(())
}

/// The newest whole lines of `text` that fit in `budget` bytes.
pub fn keep_newest(text: &[u8], budget: usize) -> &[u8] {
    if text.len() <= budget {
        return text;
    }
    let cut = text.len() - budget;
    match text[cut..].iter().position(|&b| b == b'\n') {
        Some(i) => &text[cut + i + 1..],
        None => &[],
    }
}

/// The newest `n` events, oldest first. Lines that do not parse (a torn write after a
/// crash) are skipped.
pub fn read_last(root: &SysRoot, n: usize) -> Vec<ClockEvent> {
    let Ok(Some(text)) = root.read_optional(paths::CLOCK_EVENTS) else { return vec![] };
    let mut events: Vec<ClockEvent> = text.lines().rev().filter_map(|l| serde_json::from_str(l).ok()).take(n).collect();
    events.reverse();
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_reads_back_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        assert!(read_last(&root, 5).is_empty());
        let filler = "x".repeat(900);
        for i in 0..1000 {
            append(&root, &event(ClockEventKind::RtcCheck, Some(i), format!("{i} {filler}"))).unwrap();
        }
        let size = std::fs::metadata(dir.path().join("var/lib/almavmm/clock-events.jsonl")).unwrap().len();
        assert!(size <= MAX_BYTES, "{size}");
        let last = read_last(&root, 3);
        assert_eq!(last.iter().map(|e| e.offset_ns.unwrap()).collect::<Vec<_>>(), [997, 998, 999]);
        let all = read_last(&root, usize::MAX);
        assert!(all.len() > 100 && all.len() < 300, "{}", all.len());
        assert!(all.windows(2).all(|w| w[0].offset_ns < w[1].offset_ns), "oldest dropped, order kept");
    }

    #[test]
    fn keep_newest_cuts_at_a_line() {
        assert_eq!(keep_newest(b"aa\nbb\ncc\n", 5), b"cc\n");
        assert_eq!(keep_newest(b"aa\n", 10), b"aa\n");
    }

    #[test]
    fn torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysRoot::new(dir.path());
        append(&root, &event(ClockEventKind::WatchStarted, None, "a")).unwrap();
        let p = dir.path().join("var/lib/almavmm/clock-events.jsonl");
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"at_ns\":1,\"ki");
        std::fs::write(&p, text).unwrap();
        assert_eq!(read_last(&root, 10).len(), 1);
    }
}
