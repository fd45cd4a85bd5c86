//! When may a guest the proxy started be stopped? Pure decision, tested on its own.

use std::time::Duration;

use crate::state::vm::StartedBy;

/// How long an idle stop waits for a clean power-off before forcing it.
pub const IDLE_STOP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Someone started it by hand, or a session is live: leave it alone.
    Keep,
    /// Idle, but not for long enough: look again after this many seconds.
    WaitMore(u64),
    Stop,
}

/// `last_end`: when the last session ended (Unix seconds); `idle`: seconds of idleness
/// required before stopping.
pub fn decide(started_by: StartedBy, live_sessions: usize, last_end: Option<u64>, now: u64, idle: u64) -> Decision {
    if started_by == StartedBy::Hand || live_sessions > 0 {
        return Decision::Keep;
    }
    let since = last_end.map(|e| now.saturating_sub(e)).unwrap_or(u64::MAX);
    if since >= idle { Decision::Stop } else { Decision::WaitMore(idle - since) }
}

/// Parse an idle duration: `600`, `30s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a duration: write e.g. 600, 30s, 10m or 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_stops_a_guest_started_by_hand() {
        assert_eq!(decide(StartedBy::Hand, 0, Some(0), 1_000_000, 600), Decision::Keep);
    }

    #[test]
    fn never_stops_under_a_live_session() {
        assert_eq!(decide(StartedBy::Proxy, 1, Some(0), 1_000_000, 0), Decision::Keep);
    }

    #[test]
    fn waits_out_the_idle_period_from_the_last_session_end() {
        assert_eq!(decide(StartedBy::Proxy, 0, Some(1000), 1100, 600), Decision::WaitMore(500));
        assert_eq!(decide(StartedBy::Proxy, 0, Some(1000), 1600, 600), Decision::Stop);
        assert_eq!(decide(StartedBy::Proxy, 0, Some(1000), 1000, 0), Decision::Stop);
        assert_eq!(decide(StartedBy::Proxy, 0, None, 5, 600), Decision::Stop);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600"), Ok(600));
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
