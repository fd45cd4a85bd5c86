//! Bounded waiting: every poll loop in host, agent and harness goes through here, so that
//! none of them can wait forever and each says what it waited for when time runs out.

use std::time::{Duration, Instant};

/// A point in time after which a wait gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline(Instant::now() + limit)
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }

    /// Time left, zero once passed.
    pub fn left(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Call `attempt` every `poll` until it yields a value or fails, or until `deadline` passes.
///
/// `Ok(Some(v))`: it yielded `v`. `Ok(None)`: the deadline passed first; the caller says
/// what it waited for. `Err(e)`: `attempt` gave up on its own (an error not worth retrying).
/// `attempt` always runs at least once, and once more at (or after) the deadline, so a
/// condition that became true during the last sleep is still seen.
pub fn wait_until<T, E>(
    deadline: Deadline,
    poll: Duration,
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    loop {
        let last = deadline.passed();
        if let Some(v) = attempt()? {
            return Ok(Some(v));
        }
        if last {
            return Ok(None);
        }
        std::thread::sleep(poll.min(deadline.left()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let got = wait_until(Deadline::after(Duration::from_secs(5)), Duration::from_millis(1), || {
            n += 1;
            Ok::<_, Infallible>((n == 3).then_some(n))
        });
        assert_eq!(got.unwrap(), Some(3));
    }

    #[test]
    fn gives_up_at_the_deadline_after_a_last_attempt() {
        let mut calls = 0;
        let started = Instant::now();
        let got = wait_until(Deadline::after(Duration::from_millis(30)), Duration::from_millis(10), || {
            calls += 1;
            Ok::<Option<()>, Infallible>(None)
        });
        assert_eq!(got.unwrap(), None);
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(calls >= 2, "tried only {calls} times");
    }

    #[test]
    fn an_error_ends_the_wait_at_once() {
        let mut calls = 0;
        let got: Result<Option<()>, &str> =
            wait_until(Deadline::after(Duration::from_secs(60)), Duration::from_millis(1), || {
                calls += 1;
                Err("refused")
            });
        assert_eq!(got, Err("refused"));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_passed_deadline_still_gets_one_attempt() {
        let got = wait_until(Deadline::after(Duration::ZERO), Duration::from_secs(60), || Ok::<_, Infallible>(Some(1)));
        assert_eq!(got.unwrap(), Some(1));
    }
}
