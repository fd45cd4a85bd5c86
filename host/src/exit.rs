//! Exit codes, the same for every command, and the errors that choose them.

/// The command did what was asked (for `doctor`: nothing failed).
pub const OK: u8 = 0;
/// The command failed; the message says why.
pub const FAILURE: u8 = 1;
/// The command line was wrong (clap's own code for usage errors).
pub const USAGE: u8 = 2;
/// The named guest does not exist.
pub const NO_SUCH_GUEST: u8 = 3;

/// Errors that deserve their own exit code rather than the generic failure.
#[derive(Debug, thiserror::Error)]
pub enum Classified {
    #[error("no guest named {name:?}{}", known_suffix(.known))]
    NoSuchGuest { name: String, known: Vec<String> },
    #[error("{0}")]
    Usage(String),
}

fn known_suffix(known: &[String]) -> String {
    if known.is_empty() {
        "; there are no guests yet (create one with `almavmm-host up NAME`)".into()
    } else {
        format!("; guests: {}", known.join(", "))
    }
}

/// The exit code for an error that reached `main`.
pub fn code_for(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<Classified>() {
        Some(Classified::NoSuchGuest { .. }) => NO_SUCH_GUEST,
        Some(Classified::Usage(_)) => USAGE,
        None => FAILURE,
    }
}
