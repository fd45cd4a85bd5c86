//! vmctl(8)'s exit statuses that mean something other than failure (pure).
//!
//! `vmctl status` (usr.sbin/vmctl/vmctl.c 1.94, 2025-06-09, `print_vm_info`; main.c
//! `vmmaction`): `print_vm_info` prints the header, one row per VM, and returns `ENOENT`
//! when it counted no VM at all; `vmmaction` turns any non-zero result into exit 1 without
//! printing anything. So on a host where vmd knows no VM, `vmctl status` prints the header
//! only and exits 1 with an empty stderr. Releases whose `print_vm_info` returned `void`
//! (vmctl.c 1.42, 2017, and later revisions before the STATE column) exit 0 there; which
//! release between those and 1.94 first exits 1 was not checked, so both are read as "no
//! VMs". The count covers every VM vmd sent, not only one asked for by name: `vmctl status
//! NAME` for an unknown NAME exits 0 as long as vmd knows some other VM.

/// Is this `vmctl status` answer "vmd knows no VM"? Exit 1, nothing on stderr, and stdout
/// holding the header line (first field `ID`, last `NAME`) and nothing else. Any other
/// failure (vmd not running: main.c's `err(1, "connect: %s", ...)` on stderr) is not.
pub fn empty_listing(code: Option<i32>, stdout: &str, stderr: &str) -> bool {
    let mut lines = stdout.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().map(|l| l.split_whitespace().collect()).unwrap_or_default();
    code == Some(1)
        && stderr.trim().is_empty()
        && header.first() == Some(&"ID")
        && header.last() == Some(&"NAME")
        && lines.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = include_str!("../../tests/fixtures/openbsd/vmctl-status-empty.txt");
    const SAMPLE: &str = include_str!("../../tests/fixtures/openbsd/vmctl-status.txt");

    #[test]
    fn header_only_with_exit_1_and_no_stderr_means_no_vms() {
        // vmctl.c 1.94: the header through `"%5s %5s %5s %7s %7s %7s %12s %8s %s\n"`, then
        // `return (ENOENT)`; main.c: exit 1, stderr untouched.
        assert_eq!(EMPTY, "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME\n");
        assert!(empty_listing(Some(1), EMPTY, ""));
    }

    #[test]
    fn every_other_failure_stays_a_failure() {
        // Older vmctl exits 0 with the same text: a plain success, not this case.
        assert!(!empty_listing(Some(0), EMPTY, ""));
        // vmd not running: no header, the reason on stderr.
        assert!(!empty_listing(Some(1), "", "vmctl: connect: /var/run/vmd.sock: No such file or directory\n"));
        // Something on stderr is a failure even after a header.
        assert!(!empty_listing(Some(1), EMPTY, "vmctl: imsg_read error\n"));
        // Rows and exit 1, or a signal, are not "no VMs".
        assert!(!empty_listing(Some(1), SAMPLE, ""));
        assert!(!empty_listing(None, EMPTY, ""));
        assert!(!empty_listing(Some(1), "", ""));
    }
}
