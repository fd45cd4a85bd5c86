//! rcctl(8) answers.
//!
//! `rcctl get DAEMON status` prints nothing: its exit status is 0 when the daemon is enabled,
//! 1 when it is not, 2 when there is no such daemon (rcctl.8, EXIT STATUS). `rcctl check
//! DAEMON` and `rcctl start DAEMON` print `DAEMON(ok)` or `DAEMON(failed)` (rc.subr(8)),
//! exiting 0 or 1; starting a daemon that already runs prints nothing and exits 0.

/// Is the daemon enabled at boot, from `rcctl get DAEMON status`'s exit code?
pub fn enabled_from_exit(code: Option<i32>) -> Result<bool, String> {
    match code {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        Some(2) => Err("rcctl says there is no such daemon".into()),
        Some(c) => Err(format!("rcctl exited with status {c}")),
        None => Err("rcctl was killed by a signal".into()),
    }
}

/// Is it running, from `rcctl check DAEMON` (or `start`) output?
pub fn check_result(output: &str, daemon: &str) -> Option<bool> {
    output.lines().map(str::trim).find_map(|l| match l.strip_prefix(daemon)? {
        "(ok)" => Some(true),
        "(failed)" => Some(false),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_status_is_the_exit_code() {
        assert_eq!(enabled_from_exit(Some(0)), Ok(true));
        assert_eq!(enabled_from_exit(Some(1)), Ok(false));
        assert!(enabled_from_exit(Some(2)).unwrap_err().contains("no such daemon"));
        assert!(enabled_from_exit(None).is_err());
    }

    #[test]
    fn check_and_start_output() {
        // rc.subr's `rc_cmd`: "${_name}(ok)" / "${_name}(failed)".
        assert_eq!(check_result("vmd(ok)\n", "vmd"), Some(true));
        assert_eq!(check_result("vmd(failed)\n", "vmd"), Some(false));
        // Another daemon's answer, or nothing (start of a running daemon), says nothing.
        assert_eq!(check_result("vmd2(ok)\n", "vmd"), None);
        assert_eq!(check_result("", "vmd"), None);
    }
}
