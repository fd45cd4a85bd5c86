//! The vmd backend (OpenBSD): guests defined in a vm.conf file of ours, driven with vmctl(8).
//!
//! Guests are defined `disable`d and owned by their user (vm.conf(5): the owner may start,
//! stop, pause and open the console of the VM), so `start`, `stop`, `status` and `console`
//! run as the user; only (re)defining needs root, for /etc and `vmctl reload` (vmd's
//! control.c 1.52 refuses a reload to any uid but 0). That goes through the host-setup machinery:
//! staged, checked with `vmd -n`, backed up, shown.

pub mod ifconfig;
pub mod status;

use std::path::Path;
use std::time::Duration;

use almavmm_shared::runner::{Cmd, RunError};
use almavmm_shared::wait::{Deadline, wait_until};

use super::{Backend, BackendError, Endpoint, GuestPoweroff, Result, RunState, StopOutcome};
use crate::check;
use crate::hostsetup::{self, Access, Privilege, Probe, vmconf};
use crate::state::home::Home;
use crate::state::name::VmName;
use crate::state::spec::BackendKind;
use crate::state::vm::Vm;

const VMCTL_HINT: &str =
    "vmctl(8) comes with OpenBSD; the vmd backend runs on OpenBSD only (elsewhere use --backend qemu)";
const SOCKET: &str = "/var/run/vmd.sock";

#[derive(Debug)]
pub struct Vmd {
    home: Home,
    vmctl: String,
    ifconfig: String,
}

impl Vmd {
    pub fn new(home: Home) -> Vmd {
        Vmd { home, vmctl: "vmctl".into(), ifconfig: "ifconfig".into() }
    }

    /// With stand-ins for vmctl and ifconfig, so the control flow can be tested off OpenBSD.
    #[cfg(test)]
    fn with_programs(home: Home, vmctl: &Path, ifconfig: &Path) -> Vmd {
        Vmd { home, vmctl: vmctl.display().to_string(), ifconfig: ifconfig.display().to_string() }
    }

    fn vmctl<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&self, args: I) -> Cmd {
        Cmd::new(&self.vmctl).args(args).hint_if_missing(VMCTL_HINT)
    }

    /// Every VM vmd knows. `vmctl status` exits 1 when that is none (vmctl.c 1.94,
    /// `print_vm_info`; see [`hostsetup::vmctl::empty_listing`]).
    pub fn list(&self) -> Result<Vec<status::VmRow>> {
        let cmd = self.vmctl(["status"]);
        let out = cmd.output()?;
        if hostsetup::vmctl::empty_listing(out.code(), &out.stdout, &out.stderr) {
            return Ok(Vec::new());
        }
        if !out.status.success() {
            return Err(vmctl_error(&cmd, &out));
        }
        status::parse(&out.stdout).map_err(|e| BackendError::Message(e.to_string()))
    }

    fn row(&self, vm: &Vm) -> Result<Option<status::VmRow>> {
        Ok(status::find(&self.list()?, vm.name.as_str()).cloned())
    }

    /// Does vmd list the VM within a few seconds? `vmctl reload` returns before vmd has
    /// read the configuration.
    fn appears(&self, vm: &Vm) -> Result<bool> {
        let listed = || Ok::<_, BackendError>(self.row(vm)?.map(|_| ()));
        Ok(wait_until(Deadline::after(Duration::from_secs(5)), Duration::from_millis(200), listed)?.is_some())
    }

    /// Rewrite our vm.conf file from the guests in the state folder (less `except`), have it
    /// checked, put it in place and make vmd read it.
    fn sync_vm_conf(&self, except: Option<&VmName>) -> Result<()> {
        let owner = hostsetup::privilege::guest_owner().map_err(BackendError::Message)?;
        let wanted = vmconf::wanted_vm_conf(&self.home, &owner.name, except).map_err(BackendError::Message)?;
        let privilege = Privilege::current();
        let read = |p: &Path| match hostsetup::gather::read_state(p, privilege, Access::MayPrompt) {
            Probe::Known(s) => Ok(s),
            Probe::Unknown(why) => Err(BackendError::Message(why)),
        };
        let main = read(Path::new(vmconf::MAIN))?;
        let ours = read(&vmconf::our_file(&owner.name))?;
        let running = self.list().is_ok();
        let stamp = hostsetup::gather::stamp();
        let action = hostsetup::plan::vm_conf_action(
            privilege,
            &stamp,
            &owner.name,
            main.as_ref(),
            ours.as_ref(),
            &wanted,
            running,
        );
        let Some(action) = action else { return Ok(()) };
        let mut transcript = Vec::new();
        let result = hostsetup::apply(std::slice::from_ref(&action), false, &mut transcript);
        tracing::info!("{}", String::from_utf8_lossy(&transcript));
        result.map_err(|e| BackendError::Message(e.full_message()))?;
        Ok(())
    }
}

/// Host setup's findings as doctor checks (`host.vmd-enabled`, `host.pf-nat-and-dns`, …).
fn doctor_checks(checks: &[hostsetup::HostCheck]) -> Vec<check::Check> {
    checks
        .iter()
        .map(|c| {
            let id: String = c
                .name
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch.to_ascii_lowercase() } else { '-' })
                .collect();
            let status = match c.status {
                hostsetup::CheckStatus::Ok => check::Status::Ok,
                hostsetup::CheckStatus::Warn => check::Status::Warn,
                hostsetup::CheckStatus::Fail => check::Status::Fail,
            };
            check::Check {
                fix: c.fix.clone(),
                ..check::Check::new(check::Group::Host, &format!("host.{id}"), status, &c.finding)
            }
        })
        .collect()
}

/// Is the host side of the guest's local interface there, up and addressed?
fn tap_check(row: Option<&status::VmRow>, ifaces: &[ifconfig::Iface], name: &str) -> check::Check {
    use check::{Check, Group, Status};
    let Some(row) = row.filter(|r| r.state == RunState::Running) else {
        return Check::new(Group::Host, "host.tap", Status::Skip, format!("{name} is not running"));
    };
    let want = ifconfig::tap_description(row.id, 0, name);
    match ifconfig::guest_tap(ifaces, row.id, name) {
        None => Check::new(
            Group::Host,
            "host.tap",
            Status::Fail,
            format!("no tap interface is described {want:?}: vmd gave {name} no local interface"),
        )
        .fix(format!("almavmm-host up {name}")),
        Some(t) if !t.up => Check::new(Group::Host, "host.tap", Status::Fail, format!("{} ({want}) is down", t.name))
            .fix(format!("doas ifconfig {} up", t.name)),
        Some(t) => match (t.inet.first(), ifconfig::guest_address(ifaces, row.id, name)) {
            (Some(host), Some(guest)) => Check::new(
                Group::Host,
                "host.tap",
                Status::Ok,
                format!("{} ({want}) is up: host {host}, guest {guest}", t.name),
            ),
            _ => Check::new(Group::Host, "host.tap", Status::Fail, format!("{} ({want}) has no IPv4 address", t.name)),
        },
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

/// A vmctl failure in words: vmd not running, or the control socket not ours to use.
fn vmctl_error(cmd: &Cmd, out: &almavmm_shared::runner::Output) -> BackendError {
    let err = &out.stderr;
    if err.contains(SOCKET) && (err.contains("No such file") || err.contains("Connection refused")) {
        BackendError::Message(
            "vmd is not running: start it with `doas rcctl start vmd` (or run `almavmm-host host setup`)".into(),
        )
    } else if err.contains("Permission denied") {
        BackendError::Message(format!(
            "you may not use vmd's control socket {SOCKET} (root:wheel, mode 0660): `doas usermod -G wheel $USER`, then log in again"
        ))
    } else {
        BackendError::Run(cmd.failure(out))
    }
}

impl Backend for Vmd {
    fn kind(&self) -> BackendKind {
        BackendKind::Vmd
    }

    fn check(&self) -> Result<String> {
        let rows = self.list()?;
        if !Path::new(hostsetup::plan::FIRMWARE_FILE).is_file() {
            return Err(BackendError::Message(format!(
                "vmd has no BIOS to boot guests with ({} is missing): run `doas fw_update vmm`",
                hostsetup::plan::FIRMWARE_FILE
            )));
        }
        Ok(format!(
            "vmd running ({} VM{} defined), BIOS firmware present",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" }
        ))
    }

    fn define(&self, vm: &Vm) -> Result<()> {
        if vm.spec.cpus > 1 {
            return Err(BackendError::Message(format!(
                "{} asks for {} CPUs in its vm.yaml, but vmd runs guests with one; set cpus: 1",
                vm.name, vm.spec.cpus
            )));
        }
        if !vm.disk().is_file() {
            return Err(BackendError::Message(format!(
                "{} has no disk at {}; it cannot be defined for vmd yet",
                vm.name,
                vm.disk().display()
            )));
        }
        self.sync_vm_conf(None)?;
        if self.appears(vm)? {
            return Ok(());
        }
        // Our file was already right but vmd never read it (it changed while vmd was down,
        // or a reload failed): have it read now.
        let argv = Privilege::current().command(&["vmctl", "reload"]);
        Cmd::new(&argv[0]).args(&argv[1..]).run()?;
        if self.appears(vm)? {
            return Ok(());
        }
        Err(BackendError::Message(format!(
            "vmd does not list {} after reading {}; see /var/log/daemon for why",
            vm.name,
            vmconf::MAIN
        )))
    }

    fn undefine(&self, vm: &Vm) -> Result<()> {
        self.sync_vm_conf(Some(&vm.name))
    }

    fn start(&self, vm: &Vm, accel: super::AccelChoice) -> Result<()> {
        if accel != super::AccelChoice::Auto {
            // Set for QEMU guests in the environment, say; vmd has vmm(4) and nothing else.
            tracing::warn!("{}: --accel/ALMAVMM_ACCEL is for QEMU guests; vmd runs every guest under vmm(4)", vm.name);
        }
        match self.row(vm)? {
            None => {
                return Err(BackendError::Message(format!(
                    "vmd does not know {}: `almavmm-host up {}` defines it",
                    vm.name, vm.name
                )));
            }
            Some(r) if r.state == RunState::Running => return Ok(()),
            Some(_) => {}
        }
        let cmd = self.vmctl(["start", vm.name.as_str()]);
        let out = cmd.output()?;
        if out.status.success() {
            tracing::info!("{}", out.stderr.trim());
            return Ok(());
        }
        // vmctl.c 1.94, `vm_start_complete`: warnx("vmm bios firmware file not found.") for
        // VMD_BIOS_MISSING, warn("start vm command failed") with vmd's errno otherwise; exit 1.
        Err(if out.stderr.contains("firmware file not found") {
            BackendError::Message(format!(
                "vmd cannot start {}: its BIOS firmware is missing; run `doas fw_update vmm`",
                vm.name
            ))
        } else if out.stderr.contains("Permission denied") || out.stderr.contains("Operation not permitted") {
            BackendError::Message(format!(
                "vmd refused to start {} for you: its vm.conf owner is another user, or you may not use {SOCKET}",
                vm.name
            ))
        } else {
            vmctl_error(&cmd, &out)
        })
    }

    fn state(&self, vm: &Vm) -> Result<RunState> {
        Ok(self.row(vm)?.map(|r| r.state).unwrap_or(RunState::Undefined))
    }

    fn ssh_endpoint(&self, vm: &Vm) -> Result<Option<Endpoint>> {
        let Some(row) = self.row(vm)? else { return Ok(None) };
        if row.state != RunState::Running {
            return Ok(None);
        }
        // `ifconfig tap` fails when no tap exists yet; that is "no address yet".
        let out = Cmd::new(&self.ifconfig).arg("tap").output()?;
        let ifaces = if out.status.success() { ifconfig::parse(&out.stdout) } else { Vec::new() };
        Ok(ifconfig::guest_address(&ifaces, row.id, vm.name.as_str())
            .map(|addr| Endpoint { host: addr.to_string(), port: 22 }))
    }

    fn stop(&self, vm: &Vm, poweroff: GuestPoweroff<'_>, timeout: Duration) -> Result<StopOutcome> {
        let Some(row) = self.row(vm)? else { return Ok(StopOutcome::AlreadyStopped) };
        if !row.state.is_up() {
            return Ok(StopOutcome::AlreadyStopped);
        }
        // Linux has no driver for vmd's vmmci device, so `vmctl stop` would cut the power:
        // the guest powers itself off, we wait, and force only after the timeout.
        let why = if row.state == RunState::Paused {
            "it is paused, so it cannot power itself off".to_string()
        } else {
            match poweroff() {
                Err(e) => format!("it could not be asked to power off ({e:#})"),
                Ok(()) => {
                    // vmctl.c 1.94 `waitfor_vm`: `terminated vm ID` and exit 0 when the VM's
                    // process ends; an error (exit 1) if it is not running any more.
                    let wait = self.vmctl(["wait", vm.name.as_str()]).timeout(timeout).run();
                    match wait {
                        Ok(_) => return Ok(StopOutcome::Clean),
                        // vmd answers a wait for a VM that is no longer running with an error.
                        Err(_) if !self.state(vm)?.is_up() => return Ok(StopOutcome::Clean),
                        Err(RunError::TimedOut { .. }) => {
                            format!("it did not power off within {} of `systemctl poweroff`", seconds(timeout))
                        }
                        Err(e) => format!("`vmctl wait` failed ({e})"),
                    }
                }
            }
        };
        tracing::warn!("{}: {why}; powering it off with `vmctl stop -f`", vm.name);
        // main.c 1.87: `stop [-fw] [id | -a]`, flags first; vmctl.c 1.94
        // `terminate_vm_complete`: `requested to shutdown vm ID` (0), `failed: Invalid
        // argument` for a VM that is not running (1), `vm not found` (1).
        let forced = self.vmctl(["stop", "-f", vm.name.as_str()]);
        let out = forced.output()?;
        if !out.status.success() && self.state(vm)?.is_up() {
            return Err(vmctl_error(&forced, &out));
        }
        let down = || Ok::<_, BackendError>((!self.state(vm)?.is_up()).then_some(()));
        if wait_until(Deadline::after(Duration::from_secs(30)), Duration::from_millis(200), down)?.is_none() {
            return Err(BackendError::Message(format!(
                "{} is still up 30s after `vmctl stop -f {}`",
                vm.name, vm.name
            )));
        }
        Ok(StopOutcome::Forced { why: format!("{why}; it was powered off with `vmctl stop -f`") })
    }

    fn host_checks(&self) -> Vec<check::Check> {
        match hostsetup::gather() {
            Ok(facts) => doctor_checks(&hostsetup::checks(&facts)),
            Err(e) => {
                vec![check::Check::new(check::Group::Host, "host.setup", check::Status::Warn, e.full_message())]
            }
        }
    }

    fn guest_host_checks(&self, vm: &Vm) -> Vec<check::Check> {
        let row = match self.row(vm) {
            Ok(r) => r,
            Err(e) => {
                return vec![check::Check::new(check::Group::Host, "host.tap", check::Status::Skip, e.to_string())];
            }
        };
        let ifaces = Cmd::new(&self.ifconfig)
            .arg("tap")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| ifconfig::parse(&o.stdout))
            .unwrap_or_default();
        vec![tap_check(row.as_ref(), &ifaces, vm.name.as_str())]
    }

    fn console(&self, vm: &Vm) -> Result<()> {
        match self.row(vm)? {
            Some(r) if r.state.is_up() => {}
            _ => return Err(BackendError::Message(format!("{} is not running", vm.name))),
        }
        let status = self.vmctl(["console", vm.name.as_str()]).run_attached()?;
        if status.success() {
            Ok(())
        } else {
            Err(BackendError::Message(format!("`vmctl console {}` ended with {status}", vm.name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: i32, stderr: &str) -> almavmm_shared::runner::Output {
        use std::os::unix::process::ExitStatusExt;
        almavmm_shared::runner::Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    /// vmctl and ifconfig stand-ins: the VM's state lives in a file ("running", "stopped",
    /// or absent: vmd does not know it), each vmctl call is logged, and `status` prints
    /// vmctl.c's format, exiting 1 after the header when vmd knows no VM (vmctl.c 1.94). `wait` returns once the state is no longer "running".
    struct Fake {
        dir: tempfile::TempDir,
        vmd: Vmd,
        vm: Vm,
    }

    impl Fake {
        fn new(state: Option<&str>) -> Fake {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().display().to_string();
            let vmctl = dir.path().join("vmctl");
            let row = "printf '%5s %5s %5s %7s %7s %7s %12s %8s %s\\n'";
            std::fs::write(
                &vmctl,
                format!(
                    "#!/bin/sh\nD={d}\necho \"$*\" >> $D/calls\nstate=$(cat $D/state 2>/dev/null)\ncase \"$1\" in\n\
                     status) {row} ID PID VCPUS MAXMEM CURMEM TTY OWNER STATE NAME\n\
                       case \"$state\" in running) {row} 1 4242 1 2.0G 1.0G ttyp0 alice running alma ;;\n\
                       stopped) {row} 1 - 1 2.0G - - alice stopped alma ;;\n\
                       *) exit 1 ;; esac ;;\n\
                     wait) while [ \"$(cat $D/state)\" = running ]; do sleep 0.05; done ;;\n\
                     stop) echo stopped > $D/state; echo 'vmctl: sent request to terminate vm 1' >&2 ;;\n\
                     start) echo running > $D/state; echo 'vmctl: started vm 1 successfully, tty /dev/ttyp0' >&2 ;;\n\
                     esac\n"
                ),
            )
            .unwrap();
            let ifconfig = dir.path().join("ifconfig");
            std::fs::write(
                &ifconfig,
                format!("#!/bin/sh\ncat {}/tests/fixtures/openbsd/ifconfig-tap.txt\n", env!("CARGO_MANIFEST_DIR")),
            )
            .unwrap();
            for p in [&vmctl, &ifconfig] {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            if let Some(s) = state {
                std::fs::write(dir.path().join("state"), format!("{s}\n")).unwrap();
            }
            let vm = Vm {
                name: "alma".parse().unwrap(),
                dir: dir.path().join("vms/alma"),
                spec: serde_norway::from_str(
                    "name: alma\nbackend: vmd\nmemory: 2G\ndisk_size: 20G\nimage: {url: u, trust: almalinux9}\n\
                     user: u\nhostname: alma\nssh_key: /k.pub\ninstance_id: i\n",
                )
                .unwrap(),
            };
            let vmd = Vmd::with_programs(Home::at(dir.path()), &vmctl, &ifconfig);
            Fake { dir, vmd, vm }
        }

        fn set(&self, state: &str) {
            std::fs::write(self.dir.path().join("state"), format!("{state}\n")).unwrap();
        }

        /// The vmctl calls made, other than `status`.
        fn calls(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("calls"))
                .unwrap_or_default()
                .lines()
                .filter(|l| *l != "status")
                .map(String::from)
                .collect()
        }
    }

    #[test]
    fn state_and_address_come_from_status_and_the_tap() {
        let f = Fake::new(None);
        assert_eq!(f.vmd.state(&f.vm).unwrap(), RunState::Undefined);
        assert_eq!(f.vmd.ssh_endpoint(&f.vm).unwrap(), None);
        f.set("stopped");
        assert_eq!(f.vmd.state(&f.vm).unwrap(), RunState::Stopped);
        assert_eq!(f.vmd.ssh_endpoint(&f.vm).unwrap(), None);
        f.vmd.start(&f.vm, crate::backend::AccelChoice::Auto).unwrap();
        assert_eq!(f.calls(), ["start alma"]);
        assert_eq!(f.vmd.state(&f.vm).unwrap(), RunState::Running);
        assert_eq!(f.vmd.ssh_endpoint(&f.vm).unwrap(), Some(Endpoint { host: "100.64.1.3".into(), port: 22 }));
        // Starting a running guest does nothing.
        f.vmd.start(&f.vm, crate::backend::AccelChoice::Auto).unwrap();
        assert_eq!(f.calls(), ["start alma"]);
    }

    #[test]
    fn starting_an_undefined_guest_says_how_to_define_it() {
        let f = Fake::new(None);
        let e = f.vmd.start(&f.vm, crate::backend::AccelChoice::Auto).unwrap_err().to_string();
        assert_eq!(e, "vmd does not know alma: `almavmm-host up alma` defines it");
    }

    #[test]
    fn a_guest_that_powers_itself_off_stops_cleanly() {
        let f = Fake::new(Some("running"));
        let state = f.dir.path().join("state");
        let mut asked = 0;
        let mut poweroff = || {
            asked += 1;
            std::fs::write(&state, "stopped\n")?;
            Ok(())
        };
        let outcome = f.vmd.stop(&f.vm, &mut poweroff, Duration::from_secs(10)).unwrap();
        assert_eq!(outcome, StopOutcome::Clean);
        assert_eq!(asked, 1);
        assert_eq!(f.calls(), ["wait alma"], "no forced stop");
    }

    #[test]
    fn a_guest_that_does_not_power_off_is_forced_after_the_timeout_and_says_so() {
        let f = Fake::new(Some("running"));
        let mut poweroff = || Ok(());
        let started = std::time::Instant::now();
        let outcome = f.vmd.stop(&f.vm, &mut poweroff, Duration::from_millis(500)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(
            outcome,
            StopOutcome::Forced {
                why:
                    "it did not power off within 0.5s of `systemctl poweroff`; it was powered off with `vmctl stop -f`"
                        .into()
            }
        );
        assert_eq!(f.calls(), ["wait alma", "stop -f alma"]);
        assert_eq!(f.vmd.state(&f.vm).unwrap(), RunState::Stopped);
    }

    #[test]
    fn when_ssh_fails_the_stop_is_forced_at_once() {
        let f = Fake::new(Some("running"));
        let mut poweroff = || Err(anyhow::anyhow!("no address to reach the guest at"));
        let outcome = f.vmd.stop(&f.vm, &mut poweroff, Duration::from_secs(60)).unwrap();
        let StopOutcome::Forced { why } = outcome else { panic!("{outcome:?}") };
        assert!(why.starts_with("it could not be asked to power off (no address to reach the guest at)"), "{why}");
        assert_eq!(f.calls(), ["stop -f alma"]);
    }

    #[test]
    fn stopping_a_stopped_or_unknown_guest_does_nothing() {
        for state in [Some("stopped"), None] {
            let f = Fake::new(state);
            let mut poweroff = || -> anyhow::Result<()> { panic!("must not be asked") };
            assert_eq!(f.vmd.stop(&f.vm, &mut poweroff, Duration::from_secs(1)).unwrap(), StopOutcome::AlreadyStopped);
            assert!(f.calls().is_empty());
        }
    }

    #[test]
    fn vmctl_failures_say_what_to_do() {
        let cmd = Cmd::new("vmctl").arg("status");
        // usr.sbin/vmctl/main.c 1.87 `vmmaction`: `err(1, "connect: %s", socket_name)`.
        let e = vmctl_error(&cmd, &out(1, "vmctl: connect: /var/run/vmd.sock: No such file or directory\n"));
        assert!(e.to_string().starts_with("vmd is not running: start it with `doas rcctl start vmd`"), "{e}");
        let e = vmctl_error(&cmd, &out(1, "vmctl: connect: /var/run/vmd.sock: Permission denied\n"));
        assert!(e.to_string().contains("usermod -G wheel"), "{e}");
        let e = vmctl_error(&cmd, &out(1, "vmctl: something else\n"));
        assert!(matches!(e, BackendError::Run(_)), "{e}");
    }

    #[test]
    fn doctor_sees_host_setup_findings_with_stable_ids() {
        let c = doctor_checks(&[hostsetup::HostCheck {
            name: "pf NAT and DNS".into(),
            status: hostsetup::CheckStatus::Fail,
            finding: "f".into(),
            fix: Some("almavmm-host host setup".into()),
        }]);
        assert_eq!(c[0].id, "host.pf-nat-and-dns");
        assert_eq!(
            (c[0].group, c[0].status, c[0].fix.as_deref()),
            (check::Group::Host, check::Status::Fail, Some("almavmm-host host setup"))
        );
    }

    #[test]
    fn tap_check_finds_the_guests_tap_exactly() {
        let rows = status::parse(include_str!("../../../tests/fixtures/openbsd/vmctl-status.txt")).unwrap();
        let ifaces = ifconfig::parse(include_str!("../../../tests/fixtures/openbsd/ifconfig-tap.txt"));
        let alma = tap_check(status::find(&rows, "alma"), &ifaces, "alma");
        assert_eq!(
            (alma.status, alma.finding.as_str()),
            (check::Status::Ok, "tap0 (vm1-if0-alma) is up: host 100.64.1.2, guest 100.64.1.3")
        );
        // db is stopped: nothing to look at. mydb is paused, not running.
        assert_eq!(tap_check(status::find(&rows, "db"), &ifaces, "db").status, check::Status::Skip);
        // web runs (id 4) but no tap is described vm4-if0-web.example.org.
        let web = tap_check(status::find(&rows, "web.example.org"), &ifaces, "web.example.org");
        assert_eq!(web.status, check::Status::Fail);
        assert!(web.finding.contains("\"vm4-if0-web.example.org\""), "{}", web.finding);
        let mut down = ifaces.clone();
        down[0].up = false;
        let c = tap_check(status::find(&rows, "alma"), &down, "alma");
        assert_eq!((c.status, c.fix.as_deref()), (check::Status::Fail, Some("doas ifconfig tap0 up")));
    }
}
