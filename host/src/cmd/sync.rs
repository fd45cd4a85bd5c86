//! `almavmm-host sync [NAME | --all]`: measure a guest's clock, step it to the host's time,
//! measure again. Run by the OpenBSD resume hook after every host resume.

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::backend::{self, RunState};
use crate::clock::{self, Measured, human_offset};
use crate::ssh::client::Target;
use crate::state::home::Home;
use crate::state::name::VmName;
use crate::state::vm::Vm;

#[derive(Debug, Args)]
#[command(after_help = "With --all, guests that are not running are skipped silently (this is what \
/etc/apm/resume runs after the host wakes up). Exit status 1 when any running guest could not be synced.")]
pub struct SyncArgs {
    /// The guest to sync.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub name: Option<VmName>,
    /// Every running guest.
    #[arg(long)]
    pub all: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Synced {
    pub guest: String,
    pub before: Measured,
    pub after: Measured,
    /// Whether the guest's hardware clock was written too.
    pub rtc_written: bool,
}

/// Measure, set, measure again, over one session.
pub fn sync_guest(t: &Target) -> Result<Synced, clock::ClockError> {
    let mut s = clock::Session::open(t)?;
    let before = s.measure(clock::ROUNDS)?;
    let rtc = s.set(before.rtt_ns)?;
    let after = s.measure(clock::ROUNDS)?;
    s.close()?;
    if let almavmm_shared::clock::RtcWrite::Failed(why) = &rtc {
        tracing::warn!("{}: clock set, but the RTC was not written: {why}", t.alias);
    }
    Ok(Synced {
        guest: t.alias.clone(),
        before,
        after,
        rtc_written: matches!(rtc, almavmm_shared::clock::RtcWrite::Written),
    })
}

pub fn run(args: SyncArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    let vms: Vec<Vm> = match &args.name {
        Some(n) => vec![Vm::load(&home, n)?],
        None => Vm::load_all(&home).into_iter().filter_map(Result::ok).collect(),
    };
    let mut results = Vec::new();
    let mut failed = false;
    for vm in &vms {
        let backend = backend::for_kind(vm.spec.backend, &home)?;
        let state = backend.state(vm)?;
        let endpoint = if state == RunState::Running { backend.ssh_endpoint(vm)? } else { None };
        let Some(endpoint) = endpoint else {
            if args.all {
                continue;
            }
            bail!("{} is {}; start it first", vm.name, state.as_str());
        };
        match sync_guest(&Target::for_vm(vm, endpoint)) {
            Ok(r) => {
                vm.log_event(&format!(
                    "clock synced: {} -> {}",
                    human_offset(r.before.offset_ns),
                    human_offset(r.after.offset_ns)
                ));
                eprintln!(
                    "{}: offset {} (±{:.1} ms) -> {} (±{:.1} ms)",
                    vm.name,
                    human_offset(r.before.offset_ns),
                    r.before.error_bound_ns as f64 / 1e6,
                    human_offset(r.after.offset_ns),
                    r.after.error_bound_ns as f64 / 1e6
                );
                results.push(r);
            }
            Err(e) => {
                failed = true;
                eprintln!("{}: sync failed: {e}", vm.name);
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(if failed { crate::exit::FAILURE } else { crate::exit::OK })
}
