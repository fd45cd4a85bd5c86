//! The clock contract between host and agent: the line protocol of `almavmm-agent clock probe`,
//! the NTP-style offset estimate the host computes from it, and the thresholds both sides
//! judge an offset by.
//!
//! One SSH session carries many rounds, so the connection's set-up cost is paid once and
//! every round measures only the transport's latency:
//!
//! ```text
//! agent → host   ALMAVMM-CLOCK <protocol> <agent version>      (once, when ready)
//! host  → agent  PROBE <seq>
//! agent → host   TIME <seq> <guest CLOCK_REALTIME ns>
//! host  → agent  SET <host ns> <rtt ns>
//! agent → host   SET-DONE <before ns> <after ns> RTC-OK
//!                SET-DONE <before ns> <after ns> RTC-ERR <why>
//! agent → host   ERR <message>                                 (bad request; session goes on)
//! ```
//!
//! The host ends the session by closing its side (EOF). All times are nanoseconds since the
//! Unix epoch, as signed decimal integers.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 for a clock set before 1970, which no check relies on).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Nanoseconds since the Unix epoch, as the clock protocol carries them.
pub fn unix_now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// First word of the agent's greeting line.
pub const HELLO_WORD: &str = "ALMAVMM-CLOCK";

/// An offset above this (in either direction) is worth a warning.
pub const WARN_OFFSET_NS: i64 = 100_000_000;
/// An offset above this is a failure: time-sensitive software in the guest misbehaves.
pub const FAIL_OFFSET_NS: i64 = 1_000_000_000;
/// The fewest rounds the host should measure before trusting the best one.
pub const MIN_PROBE_ROUNDS: usize = 8;

/// What the host sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Ask for the guest's time now.
    Probe { seq: u64 },
    /// Step the guest's clock to `host_ns + rtt_ns / 2` (the host's time when the request
    /// arrives, assuming a symmetric path), then write the RTC.
    Set { host_ns: i64, rtt_ns: i64 },
}

/// Whether the agent could write the hardware clock after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcWrite {
    Written,
    Failed(String),
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Hello { protocol: u32, agent_version: String },
    Time { seq: u64, guest_ns: i64 },
    SetDone { before_ns: i64, after_ns: i64, rtc: RtcWrite },
    Error { message: String },
}

/// A line that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty line")]
    Empty,
    #[error("unknown {what} {word:?} in {line:?}")]
    UnknownVerb { what: &'static str, word: String, line: String },
    #[error("malformed {verb} line {line:?}: {why}")]
    Malformed { verb: &'static str, line: String, why: String },
    #[error(
        "the guest's agent speaks clock protocol {theirs}, this side speaks {ours}: install the agent that comes with almavmm {version}",
        version = crate::VERSION
    )]
    Incompatible { theirs: u32, ours: u32 },
}

impl Request {
    /// The line to send, newline included.
    pub fn encode(&self) -> String {
        match self {
            Request::Probe { seq } => format!("PROBE {seq}\n"),
            Request::Set { host_ns, rtt_ns } => format!("SET {host_ns} {rtt_ns}\n"),
        }
    }

    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            None => Err(ProtocolError::Empty),
            Some("PROBE") => {
                let seq = int_field(&mut words, "PROBE", line, "sequence number")?;
                no_more(words, "PROBE", line)?;
                Ok(Request::Probe { seq })
            }
            Some("SET") => {
                let host_ns = int_field(&mut words, "SET", line, "host time")?;
                let rtt_ns: i64 = int_field(&mut words, "SET", line, "round trip")?;
                no_more(words, "SET", line)?;
                if rtt_ns < 0 {
                    return Err(malformed("SET", line, "the round trip cannot be negative"));
                }
                Ok(Request::Set { host_ns, rtt_ns })
            }
            Some(other) => {
                Err(ProtocolError::UnknownVerb { what: "request", word: other.to_string(), line: line.to_string() })
            }
        }
    }
}

impl Reply {
    /// The line to send, newline included. Free text is kept on one line.
    pub fn encode(&self) -> String {
        match self {
            Reply::Hello { protocol, agent_version } => format!("{HELLO_WORD} {protocol} {agent_version}\n"),
            Reply::Time { seq, guest_ns } => format!("TIME {seq} {guest_ns}\n"),
            Reply::SetDone { before_ns, after_ns, rtc: RtcWrite::Written } => {
                format!("SET-DONE {before_ns} {after_ns} RTC-OK\n")
            }
            Reply::SetDone { before_ns, after_ns, rtc: RtcWrite::Failed(why) } => {
                format!("SET-DONE {before_ns} {after_ns} RTC-ERR {}\n", one_line(why))
            }
            Reply::Error { message } => format!("ERR {}\n", one_line(message)),
        }
    }

    pub fn parse(line: &str) -> Result<Reply, ProtocolError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut words = rest.split_ascii_whitespace();
        match verb {
            "" => Err(ProtocolError::Empty),
            HELLO_WORD => {
                let protocol = int_field(&mut words, "hello", line, "protocol version")?;
                let agent_version = words.next().unwrap_or("unknown").to_string();
                Ok(Reply::Hello { protocol, agent_version })
            }
            "TIME" => {
                let seq = int_field(&mut words, "TIME", line, "sequence number")?;
                let guest_ns = int_field(&mut words, "TIME", line, "guest time")?;
                no_more(words, "TIME", line)?;
                Ok(Reply::Time { seq, guest_ns })
            }
            "SET-DONE" => {
                let before_ns = int_field(&mut words, "SET-DONE", line, "time before")?;
                let after_ns = int_field(&mut words, "SET-DONE", line, "time after")?;
                let rtc = match words.next() {
                    Some("RTC-OK") => RtcWrite::Written,
                    Some("RTC-ERR") => RtcWrite::Failed(words.collect::<Vec<_>>().join(" ")),
                    _ => return Err(malformed("SET-DONE", line, "expected RTC-OK or RTC-ERR")),
                };
                Ok(Reply::SetDone { before_ns, after_ns, rtc })
            }
            "ERR" => Ok(Reply::Error { message: rest.to_string() }),
            other => Err(ProtocolError::UnknownVerb { what: "reply", word: other.to_string(), line: line.to_string() }),
        }
    }

    /// Check a greeting: the host refuses an agent whose protocol it does not speak.
    pub fn check_hello(&self) -> Result<(), ProtocolError> {
        match self {
            Reply::Hello { protocol, .. } if *protocol == crate::PROTOCOL_VERSION => Ok(()),
            Reply::Hello { protocol, .. } => {
                Err(ProtocolError::Incompatible { theirs: *protocol, ours: crate::PROTOCOL_VERSION })
            }
            other => Err(malformed("hello", other.encode().trim_end(), "expected the agent's greeting first")),
        }
    }
}

fn malformed(verb: &'static str, line: &str, why: &str) -> ProtocolError {
    ProtocolError::Malformed { verb, line: line.to_string(), why: why.to_string() }
}

fn int_field<'a, T: std::str::FromStr>(
    words: &mut impl Iterator<Item = &'a str>,
    verb: &'static str,
    line: &str,
    name: &str,
) -> Result<T, ProtocolError> {
    let word = words.next().ok_or_else(|| malformed(verb, line, &format!("missing {name}")))?;
    word.parse().map_err(|_| malformed(verb, line, &format!("{name} {word:?} is not an integer")))
}

fn no_more<'a>(mut words: impl Iterator<Item = &'a str>, verb: &'static str, line: &str) -> Result<(), ProtocolError> {
    match words.next() {
        None => Ok(()),
        Some(extra) => Err(malformed(verb, line, &format!("unexpected {extra:?}"))),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The time a `SET` request (or `clock set --host-ns N --rtt-ns R`) puts on the guest's
/// clock: the host's send time plus the one-way delay, taken as half the round trip.
pub fn set_target_ns(host_ns: i64, rtt_ns: i64) -> i64 {
    host_ns.saturating_add(rtt_ns / 2)
}

/// One round of the exchange: host sends at `t0`, guest reads its clock at `t1`, host
/// receives the answer at `t2` (t0 and t2 on the host's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub t0_ns: i64,
    pub t1_ns: i64,
    pub t2_ns: i64,
}

impl Sample {
    /// Guest minus host at the moment the guest read its clock, assuming a symmetric path.
    /// Negative: the guest is behind.
    pub fn offset_ns(&self) -> i64 {
        let mid = (self.t0_ns as i128 + self.t2_ns as i128) / 2;
        clamp_i64(self.t1_ns as i128 - mid)
    }

    pub fn rtt_ns(&self) -> i64 {
        clamp_i64(self.t2_ns as i128 - self.t0_ns as i128)
    }

    /// However asymmetric the path, the true offset is within this of [`Self::offset_ns`].
    pub fn error_bound_ns(&self) -> i64 {
        self.rtt_ns() / 2
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The best estimate from a series of rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub offset_ns: i64,
    pub error_bound_ns: i64,
    pub rtt_ns: i64,
    /// How many rounds were measured (the estimate comes from one of them).
    pub rounds: usize,
}

impl Estimate {
    /// Keep the round with the smallest round trip: its offset has the tightest error bound.
    /// Rounds whose answer came back before the question was sent (a host clock stepped
    /// mid-measurement) are ignored. `None` when no usable round remains.
    pub fn from_samples(samples: &[Sample]) -> Option<Estimate> {
        let best = samples.iter().filter(|s| s.t2_ns >= s.t0_ns).min_by_key(|s| s.rtt_ns())?;
        Some(Estimate {
            offset_ns: best.offset_ns(),
            error_bound_ns: best.error_bound_ns(),
            rtt_ns: best.rtt_ns(),
            rounds: samples.len(),
        })
    }

    pub fn verdict(&self) -> Verdict {
        Verdict::of_offset(self.offset_ns)
    }
}

/// How an offset is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    /// Warn above 100 ms, fail above 1 s, in either direction.
    pub fn of_offset(offset_ns: i64) -> Verdict {
        let magnitude = offset_ns.unsigned_abs();
        if magnitude > FAIL_OFFSET_NS as u64 {
            Verdict::Fail
        } else if magnitude > WARN_OFFSET_NS as u64 {
            Verdict::Warn
        } else {
            Verdict::Ok
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        })
    }
}

/// A signed duration for people: `+1.234 s`, `-30.002 s`, `+12.3 ms`, `+850 µs`.
pub fn format_offset(ns: i64) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    let abs = ns.unsigned_abs();
    if abs >= 1_000_000_000 {
        format!("{sign}{:.3} s", abs as f64 / 1e9)
    } else if abs >= 1_000_000 {
        format!("{sign}{:.1} ms", abs as f64 / 1e6)
    } else {
        format!("{sign}{} µs", abs / 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Probe { seq: 0 },
            Request::Probe { seq: 17 },
            Request::Set { host_ns: 1_700_000_000_123_456_789, rtt_ns: 4_200_000 },
        ] {
            let line = r.encode();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(Request::parse(&line).unwrap(), r);
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Hello { protocol: 1, agent_version: "0.1.0".into() },
            Reply::Time { seq: 3, guest_ns: 1_700_000_000_000_000_001 },
            Reply::SetDone { before_ns: 1, after_ns: 2, rtc: RtcWrite::Written },
            Reply::SetDone { before_ns: -5, after_ns: 2, rtc: RtcWrite::Failed("/dev/rtc0: busy".into()) },
            Reply::Error { message: "unknown request \"HELLO\"".into() },
        ];
        for r in replies {
            assert_eq!(Reply::parse(&r.encode()).unwrap(), r, "{}", r.encode());
        }
    }

    #[test]
    fn free_text_stays_on_one_line() {
        let r = Reply::Error { message: "first\nsecond\tthird".into() };
        assert_eq!(r.encode(), "ERR first second third\n");
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(Request::parse("\n"), Err(ProtocolError::Empty));
        let e = Request::parse("PROBE x\n").unwrap_err().to_string();
        assert!(e.contains("sequence number \"x\" is not an integer"), "{e}");
        let e = Request::parse("SET 5 -1").unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        let e = Request::parse("SET 5").unwrap_err().to_string();
        assert!(e.contains("missing round trip"), "{e}");
        let e = Request::parse("PROBE 1 2").unwrap_err().to_string();
        assert!(e.contains("unexpected \"2\""), "{e}");
        assert!(matches!(Request::parse("TIME 1 2"), Err(ProtocolError::UnknownVerb { .. })));
    }

    #[test]
    fn hello_with_another_protocol_is_refused() {
        let ok = Reply::Hello { protocol: crate::PROTOCOL_VERSION, agent_version: "x".into() };
        assert!(ok.check_hello().is_ok());
        let future = Reply::Hello { protocol: crate::PROTOCOL_VERSION + 1, agent_version: "9.0.0".into() };
        let e = future.check_hello().unwrap_err().to_string();
        assert!(e.contains(&format!("speaks clock protocol {}", crate::PROTOCOL_VERSION + 1)), "{e}");
        assert!(Reply::Time { seq: 1, guest_ns: 1 }.check_hello().is_err());
    }

    #[test]
    fn set_target_adds_half_the_round_trip() {
        assert_eq!(set_target_ns(1_000_000_000, 4_000_000), 1_002_000_000);
        assert_eq!(set_target_ns(i64::MAX, 10), i64::MAX);
    }

    const S: i64 = 1_700_000_000_000_000_000;

    // A guest 30 s behind (a paused VM) seen through a path with 2 ms out and 8 ms back:
    // the estimate is off by the asymmetry (3 ms) and the bound (5 ms) covers it.
    #[test]
    fn offset_and_bound_with_asymmetric_delay() {
        let true_offset = -30_000_000_000;
        let t0 = S;
        let t1 = t0 + 2_000_000 + true_offset;
        let t2 = t0 + 2_000_000 + 8_000_000;
        let s = Sample { t0_ns: t0, t1_ns: t1, t2_ns: t2 };
        assert_eq!(s.rtt_ns(), 10_000_000);
        assert_eq!(s.error_bound_ns(), 5_000_000);
        assert_eq!(s.offset_ns(), true_offset - 3_000_000);
        assert!((s.offset_ns() - true_offset).abs() <= s.error_bound_ns());
    }

    #[test]
    fn estimate_keeps_the_smallest_round_trip() {
        let true_offset = 250_000_000;
        // (out, back) delays in µs; the third round is the quickest.
        let delays =
            [(900, 4000), (3000, 3000), (150, 350), (5000, 100), (700, 700), (2000, 9000), (400, 800), (600, 300)];
        let samples: Vec<Sample> = delays
            .iter()
            .enumerate()
            .map(|(i, (out, back))| {
                let t0 = S + i as i64 * 50_000_000;
                Sample { t0_ns: t0, t1_ns: t0 + out * 1000 + true_offset, t2_ns: t0 + (out + back) * 1000 }
            })
            .collect();
        let e = Estimate::from_samples(&samples).unwrap();
        assert_eq!(e.rounds, 8);
        assert_eq!(e.rtt_ns, 500_000);
        assert_eq!(e.error_bound_ns, 250_000);
        assert_eq!(e.offset_ns, true_offset - 100_000);
        assert_eq!(e.verdict(), Verdict::Warn);
    }

    #[test]
    fn rounds_with_time_running_backwards_are_ignored() {
        let bad = Sample { t0_ns: S, t1_ns: S, t2_ns: S - 1 };
        assert_eq!(Estimate::from_samples(&[bad]), None);
        assert_eq!(Estimate::from_samples(&[]), None);
    }

    #[test]
    fn thresholds() {
        assert_eq!(Verdict::of_offset(0), Verdict::Ok);
        assert_eq!(Verdict::of_offset(100_000_000), Verdict::Ok);
        assert_eq!(Verdict::of_offset(-100_000_001), Verdict::Warn);
        assert_eq!(Verdict::of_offset(1_000_000_000), Verdict::Warn);
        assert_eq!(Verdict::of_offset(-30_000_000_000), Verdict::Fail);
        assert_eq!(Verdict::of_offset(i64::MIN), Verdict::Fail);
    }

    #[test]
    fn offsets_read_well() {
        assert_eq!(format_offset(-30_002_000_000), "-30.002 s");
        assert_eq!(format_offset(12_345_678), "+12.3 ms");
        assert_eq!(format_offset(850_000), "+850 µs");
    }
}
