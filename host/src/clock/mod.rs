//! Measuring and setting a guest's clock from the host, over one SSH session with the
//! agent's `clock probe` line protocol (defined in `almavmm_shared::clock`).

use almavmm_shared::clock::{Estimate, ProtocolError, Reply, Request, RtcWrite, Sample, unix_now_ns};
use almavmm_shared::paths;
use almavmm_shared::runner::{Piped, RunError};
use serde::Serialize;

use crate::ssh::client::Target;

/// Rounds per measurement; the one with the smallest round trip is kept.
pub const ROUNDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Ssh(#[from] crate::ssh::client::SshError),
    #[error("the clock session with {alias} broke: {detail}")]
    Broken { alias: String, detail: String },
    #[error("{alias}'s agent: {source}")]
    Protocol {
        alias: String,
        #[source]
        source: ProtocolError,
    },
    #[error("{alias}'s agent refused: {message}")]
    Refused { alias: String, message: String },
}

/// A measurement, as reported (`doctor --json`, `sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Measured {
    /// Guest minus host; negative: the guest is behind.
    pub offset_ns: i64,
    pub error_bound_ns: i64,
    pub rtt_ns: i64,
    pub rounds: usize,
}

impl From<Estimate> for Measured {
    fn from(e: Estimate) -> Measured {
        Measured { offset_ns: e.offset_ns, error_bound_ns: e.error_bound_ns, rtt_ns: e.rtt_ns, rounds: e.rounds }
    }
}

/// Seconds with milliseconds, signed, for people: `-30.012 s`, `+0.004 s`.
pub fn human_offset(ns: i64) -> String {
    format!("{:+.3} s", ns as f64 / 1e9)
}

/// An open `clock probe` session.
#[derive(Debug)]
pub struct Session {
    alias: String,
    pipe: Piped,
    seq: u64,
    /// To explain SSH failures (host key, authentication) when the session breaks.
    target: Option<Target>,
}

impl Session {
    /// Start the agent's probe in the guest (as root: setting the clock needs it) and check
    /// its greeting.
    pub fn open(t: &Target) -> Result<Session, ClockError> {
        let pipe = t.command(&format!("sudo -n {} clock probe", paths::AGENT_BIN)).spawn_piped()?;
        let mut s = Session { alias: t.alias.clone(), pipe, seq: 0, target: Some(t.clone()) };
        s.greet()?;
        Ok(s)
    }

    /// A session over any process speaking the protocol (the agent behind ssh, or a
    /// stand-in in tests).
    pub fn over(alias: &str, pipe: Piped) -> Result<Session, ClockError> {
        let mut s = Session { alias: alias.to_string(), pipe, seq: 0, target: None };
        s.greet()?;
        Ok(s)
    }

    fn greet(&mut self) -> Result<(), ClockError> {
        let hello = self.reply()?;
        hello.check_hello().map_err(|source| ClockError::Protocol { alias: self.alias.clone(), source })
    }

    fn broken(&self, detail: impl Into<String>) -> ClockError {
        ClockError::Broken { alias: self.alias.clone(), detail: detail.into() }
    }

    fn reply(&mut self) -> Result<Reply, ClockError> {
        let line = self.pipe.recv().map_err(|e| self.broken(e.to_string()))?;
        let Some(line) = line else {
            let stderr = self.pipe.stderr_after_end();
            if self.pipe.was_killed_for_time() {
                return Err(ClockError::Run(self.pipe.timed_out()));
            }
            if let Some(e) = self.target.as_ref().and_then(|t| t.classify(&stderr)) {
                return Err(e.into());
            }
            let said = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            return Err(self.broken(if said.is_empty() {
                "the agent ended the session (is almavmm-agent installed, and may the user sudo?)".to_string()
            } else {
                format!("the agent ended the session: {said}")
            }));
        };
        match Reply::parse(&line).map_err(|source| ClockError::Protocol { alias: self.alias.clone(), source })? {
            Reply::Error { message } => Err(ClockError::Refused { alias: self.alias.clone(), message }),
            r => Ok(r),
        }
    }

    /// `rounds` exchanges; the estimate from the one with the smallest round trip.
    pub fn measure(&mut self, rounds: usize) -> Result<Measured, ClockError> {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            self.seq += 1;
            let t0 = unix_now_ns();
            self.pipe.send(&Request::Probe { seq: self.seq }.encode()).map_err(|e| self.broken(e.to_string()))?;
            let reply = self.reply()?;
            let t2 = unix_now_ns();
            match reply {
                Reply::Time { seq, guest_ns } if seq == self.seq => {
                    samples.push(Sample { t0_ns: t0, t1_ns: guest_ns, t2_ns: t2 })
                }
                other => return Err(self.broken(format!("expected TIME {}, got {}", self.seq, other.encode().trim()))),
            }
        }
        Estimate::from_samples(&samples)
            .map(Measured::from)
            .ok_or_else(|| self.broken("no usable round (did the host clock jump?)"))
    }

    /// Step the guest to host time, compensating half of the best round trip seen.
    pub fn set(&mut self, rtt_ns: i64) -> Result<RtcWrite, ClockError> {
        self.pipe
            .send(&Request::Set { host_ns: unix_now_ns(), rtt_ns }.encode())
            .map_err(|e| self.broken(e.to_string()))?;
        match self.reply()? {
            Reply::SetDone { rtc, .. } => Ok(rtc),
            other => Err(self.broken(format!("expected SET-DONE, got {}", other.encode().trim()))),
        }
    }

    pub fn close(self) -> Result<(), ClockError> {
        Ok(self.pipe.finish()?)
    }
}

/// Measure over one session and, when the offset is above the warn level, step the guest
/// to host time and measure again. Returns the measurement, and the one after the step if
/// there was one.
pub fn sync_if_off(t: &Target) -> Result<(Measured, Option<Measured>), ClockError> {
    let mut s = Session::open(t)?;
    let before = s.measure(ROUNDS)?;
    if before.offset_ns.abs() <= almavmm_shared::clock::WARN_OFFSET_NS {
        s.close()?;
        return Ok((before, None));
    }
    s.set(before.rtt_ns)?;
    let after = s.measure(ROUNDS)?;
    s.close()?;
    Ok((before, Some(after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in agent whose clock runs 5 s behind ours and which answers SET by noting
    /// it: the session must measure about -5 s, within its own error bound.
    const FAKE_AGENT: &str = r#"
echo "ALMAVMM-CLOCK 1 0.1.0"
while read verb a b; do
  case $verb in
    PROBE) echo "TIME $a $(( $(date +%s%N) - 5000000000 ))" ;;
    SET) echo "SET-DONE 0 $a RTC-OK" ;;
    *) echo "ERR unknown $verb" ;;
  esac
done
"#;

    #[test]
    fn session_measures_a_known_offset_and_sets() {
        use almavmm_shared::runner::Cmd;
        let pipe = Cmd::new("sh").args(["-c", FAKE_AGENT]).spawn_piped().unwrap();
        let mut s = Session::over("fake", pipe).unwrap();
        let m = s.measure(8).unwrap();
        assert_eq!(m.rounds, 8);
        assert!((m.offset_ns + 5_000_000_000).abs() < 50_000_000 + m.error_bound_ns, "{m:?}");
        assert_eq!(s.set(m.rtt_ns).unwrap(), RtcWrite::Written);
        s.close().unwrap();
    }

    #[test]
    fn an_agent_of_another_protocol_is_refused() {
        use almavmm_shared::runner::Cmd;
        let pipe = Cmd::new("sh").args(["-c", "echo 'ALMAVMM-CLOCK 99 9.0.0'; cat >/dev/null"]).spawn_piped().unwrap();
        let err = Session::over("fake", pipe).unwrap_err().to_string();
        assert!(err.contains("speaks clock protocol 99"), "{err}");
    }

    #[test]
    fn offsets_read_naturally() {
        assert_eq!(human_offset(-30_012_000_000), "-30.012 s");
        assert_eq!(human_offset(4_000_000), "+0.004 s");
    }
}
