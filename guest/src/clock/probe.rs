//! `almavmm-agent clock probe`: the agent's side of the line protocol in
//! `almavmm_shared::clock`, for as many rounds as the host wants on one connection.

use std::io::{self, BufRead, Write};

use almavmm_shared::clock::{Reply, Request, RtcWrite};

use crate::clock::timekeeping;
use crate::sys::sysroot::SysRoot;

/// The clock the session reads and steps (the real one, or a stand-in in tests).
pub trait Clock {
    fn now_ns(&mut self) -> i64;
    /// Step to the host's time; `since_arrival_ns` is how long ago the request arrived.
    fn set(&mut self, host_ns: i64, rtt_ns: i64, since_arrival_ns: i64) -> Result<(i64, i64, RtcWrite), String>;
}

#[derive(Debug)]
pub struct SystemClock {
    pub root: SysRoot,
}

impl Clock for SystemClock {
    fn now_ns(&mut self) -> i64 {
        timekeeping::realtime_ns()
    }

    fn set(&mut self, host_ns: i64, rtt_ns: i64, since_arrival_ns: i64) -> Result<(i64, i64, RtcWrite), String> {
        crate::clock::ops::host_set(&self.root, host_ns, rtt_ns, since_arrival_ns).map_err(|e| e.to_string())
    }
}

/// Greet, then answer each line until EOF. Each answer is flushed at once: the host times
/// the round trip.
pub fn serve(input: impl BufRead, mut output: impl Write, clock: &mut impl Clock) -> io::Result<u64> {
    let hello =
        Reply::Hello { protocol: almavmm_shared::PROTOCOL_VERSION, agent_version: almavmm_shared::VERSION.into() };
    output.write_all(hello.encode().as_bytes())?;
    output.flush()?;
    let mut rounds = 0;
    for line in input.lines() {
        let line = line?;
        // Read the clock before anything else: parsing is not part of the measurement.
        let arrived_ns = clock.now_ns();
        let arrived_mono = timekeeping::monotonic_ns();
        let reply = match Request::parse(&line) {
            Ok(Request::Probe { seq }) => Reply::Time { seq, guest_ns: arrived_ns },
            Ok(Request::Set { host_ns, rtt_ns }) => {
                match clock.set(host_ns, rtt_ns, timekeeping::monotonic_ns() - arrived_mono) {
                    Ok((before_ns, after_ns, rtc)) => Reply::SetDone { before_ns, after_ns, rtc },
                    Err(message) => Reply::Error { message },
                }
            }
            Err(almavmm_shared::clock::ProtocolError::Empty) => continue,
            Err(e) => Reply::Error { message: e.to_string() },
        };
        output.write_all(reply.encode().as_bytes())?;
        output.flush()?;
        rounds += 1;
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        now: i64,
        set_to: Option<i64>,
    }

    impl Clock for Fake {
        fn now_ns(&mut self) -> i64 {
            self.now += 1000;
            self.now
        }
        fn set(&mut self, host_ns: i64, rtt_ns: i64, since: i64) -> Result<(i64, i64, RtcWrite), String> {
            let target = almavmm_shared::clock::set_target_ns(host_ns, rtt_ns) + since;
            let before = self.now;
            self.now = target;
            self.set_to = Some(target);
            Ok((before, target, RtcWrite::Failed("no RTC at /dev/rtc0".into())))
        }
    }

    #[test]
    fn many_rounds_then_a_set_on_one_session() {
        let input = "PROBE 1\nPROBE 2\n\nBOGUS\nSET 5000000000 2000000\nPROBE 3\n";
        let mut out = Vec::new();
        let mut clock = Fake { now: 1_000_000, set_to: None };
        let rounds = serve(input.as_bytes(), &mut out, &mut clock).unwrap();
        assert_eq!(rounds, 5);
        let text = String::from_utf8(out).unwrap();
        let replies: Vec<Reply> = text.lines().map(|l| Reply::parse(l).unwrap()).collect();
        assert!(replies[0].check_hello().is_ok());
        assert_eq!(replies[1], Reply::Time { seq: 1, guest_ns: 1_001_000 });
        assert_eq!(replies[2], Reply::Time { seq: 2, guest_ns: 1_002_000 });
        assert!(matches!(&replies[3], Reply::Error { message } if message.contains("BOGUS")), "{:?}", replies[3]);
        let target = clock.set_to.unwrap();
        assert!((5_001_000_000..5_001_000_000 + 50_000_000).contains(&target), "{target}");
        assert!(matches!(&replies[4], Reply::SetDone { rtc: RtcWrite::Failed(_), .. }));
        assert_eq!(replies[5], Reply::Time { seq: 3, guest_ns: target + 1000 });
    }
}
