//! `almavmm-host doctor [NAME] [--json]`: host, guest, clock and network, end to end.

use clap::Args;

use crate::agent::remote::{self, RemoteError};
use crate::backend::{self, Backend, Hypervisor, RunState};
use crate::clock;
use crate::doctor::{self, Check, Group, Report, Status};
use crate::ssh::client::{SshError, Target};
use crate::state::home::Home;
use crate::state::name::VmName;
use crate::state::vm::Vm;

#[derive(Debug, Args)]
#[command(after_help = "\
Checks, in order: host (backend, accelerator; on OpenBSD vmd, firmware, forwarding, pf, resume
hook; host.space: free space under $ALMAVMM_HOME, warn below what the guests' disks may still
grow to, fail below 1 GiB), guest (running, address, SSH with the pinned key, agent and
protocol; guest.disk: blocks or inodes of a local filesystem, warn from 85% used, fail from
95%; guest.memory: warn above 25% of swap in use or after an OOM kill; guest.load: warn when
the 15-minute load exceeds the CPUs; guest.units: warn on failed systemd units), clock (clock path,
clocksource, offset from the host measured over one SSH session: best of 16 rounds, error bound
= half the round trip; warn above 100 ms, fail above 1 s), network from inside the guest
(address, default route, DNS servers, a name resolves, the gateway answers).

Exit status: 0 when no check failed (warnings allowed), 1 when one did, 3 for an unknown guest.

--json prints, for `doctor NAME`, one object:
  {\"schema\": 1, \"guest\": NAME, \"checks\": [{\"group\": \"host|guest|clock|network\",
   \"id\": \"clock.offset\", \"status\": \"ok|warn|fail|skip\", \"finding\": TEXT, \"fix\": CMD|null}],
   \"clock\": {\"offset_ns\", \"error_bound_ns\", \"rtt_ns\", \"rounds\"}|null, \"ok\": N, \"warn\": N, \"fail\": N}
and without NAME an array of such objects, one per guest (host checks only when there is none).
Fields are only ever added within a schema version.")]
pub struct DoctorArgs {
    /// The guest to check [default: every guest].
    pub name: Option<VmName>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn host_checks(home: &Home, backend: &dyn Backend) -> (Vec<Check>, Hypervisor) {
    let mut checks = Vec::new();
    let hv = backend.hypervisor();
    match backend.check() {
        Ok(desc) => {
            let status = if hv == Hypervisor::QemuTcg { Status::Warn } else { Status::Ok };
            checks.push(
                Check::new(Group::Host, "host.backend", status, desc).fix(
                    "make /dev/kvm usable for this user (software emulation is slow and has no paravirtual clock)",
                ),
            );
        }
        Err(e) => checks.push(Check::new(Group::Host, "host.backend", Status::Fail, e.to_string()).fix(
            match backend.kind() {
                crate::state::spec::BackendKind::Qemu => "apt-get install qemu-system-x86 qemu-utils",
                crate::state::spec::BackendKind::Vmd => "almavmm-host host setup",
            },
        )),
    }
    checks.extend(backend.host_checks());
    checks.push(doctor::space::check(home));
    (checks, hv)
}

/// Everything about one guest.
pub fn check_guest(home: &Home, vm: &Vm) -> anyhow::Result<Report> {
    let backend = backend::for_kind(vm.spec.backend, home)?;
    let (mut checks, _) = host_checks(home, backend.as_ref());
    // The guest's own run decides what it should find (QEMU: the accelerator it got).
    let hv = backend.guest_hypervisor(vm);
    checks.extend(backend.guest_host_checks(vm));
    let name = vm.name.as_str();
    let state = backend.state(vm)?;
    if state != RunState::Running {
        checks.push(
            Check::new(Group::Guest, "guest.running", Status::Fail, format!("{name} is {}", state.as_str()))
                .fix(format!("almavmm-host start {name}")),
        );
        checks.extend(doctor::skipped_guest_checks("the guest is not running"));
        return Ok(Report::new(Some(name.into()), checks, None));
    }
    checks.push(Check::new(Group::Guest, "guest.running", Status::Ok, format!("{name} is running")));
    let Some(endpoint) = backend.ssh_endpoint(vm)? else {
        checks.push(
            Check::new(Group::Guest, "guest.address", Status::Fail, "no address known for the guest")
                .fix(format!("almavmm-host console {name}  # did it get a DHCP lease?")),
        );
        checks.extend(doctor::skipped_guest_checks("the guest has no address"));
        return Ok(Report::new(Some(name.into()), checks, None));
    };
    checks.push(Check::new(Group::Guest, "guest.address", Status::Ok, format!("sshd at {endpoint}")));
    let target = Target::for_vm(vm, endpoint);

    // The health report and the clock measurement use separate SSH sessions; run them
    // side by side so the doctor costs one round of connection set-up, not two.
    let (health, measured) = std::thread::scope(|s| {
        let m = s.spawn(|| -> Result<clock::Measured, clock::ClockError> {
            let mut session = clock::Session::open(&target)?;
            let m = session.measure(clock::ROUNDS)?;
            session.close()?;
            Ok(m)
        });
        let h = remote::health(&target);
        (h, m.join().expect("clock thread"))
    });
    match health {
        Ok(h) => {
            checks.push(Check::new(
                Group::Guest,
                "guest.ssh",
                Status::Ok,
                format!("SSH as {} with the pinned host key", vm.spec.user),
            ));
            let mut hc = doctor::health_checks(name, &h, hv, almavmm_shared::VERSION);
            let offset = match &measured {
                Ok(m) => doctor::offset_check(name, m),
                Err(e) => Check::new(Group::Clock, "clock.offset", Status::Fail, format!("cannot measure: {e}"))
                    .fix(format!("ssh {name}.almavmm sudo almavmm-agent clock check")),
            };
            // Keep the documented order: guest, then clock (path, source, offset), then network.
            let at = hc.iter().position(|c| c.group == Group::Network).unwrap_or(hc.len());
            hc.insert(at, offset);
            checks.extend(hc);
        }
        Err(RemoteError::Ssh(e)) => {
            let fix = match &e {
                SshError::HostKeyChanged { .. } => {
                    format!("almavmm-host destroy {name}  # only if you rebuilt it on purpose")
                }
                SshError::AuthRefused { .. } => format!("check the key in {}", vm.spec_path().display()),
                _ => format!("almavmm-host console {name}"),
            };
            checks.push(Check::new(Group::Guest, "guest.ssh", Status::Fail, e.to_string()).fix(fix));
            checks.extend(doctor::skipped_guest_checks("SSH failed"));
        }
        Err(e @ RemoteError::Health { .. }) => {
            checks.push(Check::new(Group::Guest, "guest.ssh", Status::Ok, "SSH with the pinned host key"));
            checks.push(
                Check::new(Group::Guest, "guest.agent", Status::Fail, e.to_string())
                    .fix(format!("ssh {name}.almavmm sudo almavmm-agent setup")),
            );
            checks.extend(doctor::skipped_guest_checks("the agent's report is unreadable").into_iter().skip(1));
        }
    }
    Ok(Report::new(Some(name.into()), checks, measured.ok()))
}

pub fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    let color = crate::ui::stdout_color_enabled();
    let reports: Vec<Report> = match &args.name {
        Some(name) => vec![check_guest(&home, &Vm::load(&home, name)?)?],
        None => {
            let vms: Vec<Vm> = Vm::load_all(&home).into_iter().collect::<Result<_, _>>()?;
            if vms.is_empty() {
                let b = backend::for_kind(crate::state::spec::BackendKind::native(), &home)?;
                vec![Report::new(None, host_checks(&home, b.as_ref()).0, None)]
            } else {
                vms.iter().map(|vm| check_guest(&home, vm)).collect::<anyhow::Result<_>>()?
            }
        }
    };
    if args.json {
        let text = match (&args.name, reports.as_slice()) {
            (Some(_), [one]) => serde_json::to_string_pretty(one)?,
            _ => serde_json::to_string_pretty(&reports)?,
        };
        println!("{text}");
    } else {
        for r in &reports {
            print!("{}", doctor::render::render(r, color));
        }
    }
    Ok(if reports.iter().any(Report::failed) { crate::exit::FAILURE } else { crate::exit::OK })
}
