//! What a new proxy session does with its guest, decided under the guest's lock (see the
//! protocol in `proxy/mod.rs`). Pure, so that every combination is tested.

use crate::backend::RunState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It is up and nobody is stopping it (we hold the lock): relay to it.
    Relay,
    /// It is down (possibly just stopped by the command whose lock we waited for): boot it.
    Start,
    /// Nothing a proxy should do on its own; the message says what the user can do.
    Refuse(String),
}

/// `state`: the hypervisor's answer once we hold the lock; `provisioned`: its first `up`
/// finished.
pub fn plan(name: &str, state: RunState, provisioned: bool) -> Plan {
    match state {
        RunState::Running => Plan::Relay,
        RunState::Paused => Plan::Refuse(format!("{name} is paused; resume it first")),
        RunState::Crashed => {
            Plan::Refuse(format!("{name} has crashed; `almavmm-host stop {name}` ends it, then connect again"))
        }
        // Someone else's stop (vmd: a `vmctl stop` we did not make) or start is under way.
        RunState::Stopping | RunState::Waiting => {
            Plan::Refuse(format!("{name} is {} outside almavmm; try again in a moment", state.as_str()))
        }
        _ if !provisioned => {
            Plan::Refuse(format!("{name} was never brought up completely; run `almavmm-host up {name}`"))
        }
        RunState::Stopped | RunState::Undefined | RunState::Unknown => Plan::Start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_under_the_lock() {
        assert_eq!(plan("a", RunState::Running, true), Plan::Relay);
        assert_eq!(plan("a", RunState::Running, false), Plan::Relay, "up is at work on it; sshd is what counts");
        assert_eq!(plan("a", RunState::Stopped, true), Plan::Start);
        assert_eq!(plan("a", RunState::Undefined, true), Plan::Start);
        assert_eq!(plan("a", RunState::Unknown, true), Plan::Start);
        for down in [RunState::Stopped, RunState::Undefined] {
            assert!(matches!(plan("a", down, false), Plan::Refuse(m) if m.contains("almavmm-host up a")));
        }
        for odd in [RunState::Paused, RunState::Crashed, RunState::Stopping, RunState::Waiting] {
            assert!(matches!(plan("a", odd, true), Plan::Refuse(_)), "{odd:?}");
        }
    }
}
