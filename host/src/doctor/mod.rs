//! `doctor`: checks of host, guest, clock and network, each with a status, a one-line
//! finding and, when not ok, the exact command that fixes it.
//!
//! The checks are built from facts gathered first (backend answers, the agent's health
//! report, a clock measurement); judging them is pure and tested here. Rendering is in
//! `render.rs`.

pub mod render;

use almavmm_shared::clock::Verdict;
use almavmm_shared::health::{ClockPath, HealthReport};
use serde::Serialize;

pub use crate::backend::Hypervisor;
use crate::clock::{Measured, human_offset};

/// JSON schema version of `doctor --json` (documented in `doctor --help`).
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Could not be checked because an earlier check failed (e.g. the guest is down).
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Host,
    Guest,
    Clock,
    Network,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub group: Group,
    /// Stable identifier, e.g. `clock.offset`.
    pub id: String,
    pub status: Status,
    pub finding: String,
    /// The command that fixes it, when not ok.
    pub fix: Option<String>,
}

impl Check {
    pub fn new(group: Group, id: &str, status: Status, finding: impl Into<String>) -> Check {
        Check { group, id: id.to_string(), status, finding: finding.into(), fix: None }
    }
    pub fn fix(mut self, cmd: impl Into<String>) -> Check {
        if self.status != Status::Ok {
            self.fix = Some(cmd.into());
        }
        self
    }
}

/// The whole report for one guest (or for the host alone).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub guest: Option<String>,
    pub checks: Vec<Check>,
    pub clock: Option<Measured>,
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
}

impl Report {
    pub fn new(guest: Option<String>, checks: Vec<Check>, clock: Option<Measured>) -> Report {
        let count = |s| checks.iter().filter(|c| c.status == s).count();
        let (ok, warn, fail) = (count(Status::Ok), count(Status::Warn), count(Status::Fail));
        Report { schema: SCHEMA, guest, checks, clock, ok, warn, fail }
    }
    pub fn failed(&self) -> bool {
        self.fail > 0
    }
}

/// Skipped checks for everything that depends on a guest we could not reach.
pub fn skipped_guest_checks(why: &str) -> Vec<Check> {
    [
        (Group::Guest, "guest.agent"),
        (Group::Clock, "clock.path"),
        (Group::Clock, "clock.source"),
        (Group::Clock, "clock.offset"),
        (Group::Network, "network.address"),
        (Group::Network, "network.route"),
        (Group::Network, "network.dns"),
        (Group::Network, "network.resolve"),
        (Group::Network, "network.gateway"),
    ]
    .into_iter()
    .map(|(g, id)| Check::new(g, id, Status::Skip, format!("not checked: {why}")))
    .collect()
}

/// Judge the agent report: agent, clock path, clocksource and network checks.
pub fn health_checks(name: &str, h: &HealthReport, hv: Hypervisor, host_version: &str) -> Vec<Check> {
    let mut c = Vec::new();
    let origin = match h.agent.origin {
        almavmm_shared::health::AgentOrigin::Prebuilt => "prebuilt on the host",
        almavmm_shared::health::AgentOrigin::BuiltInGuest => "built in the guest from the source bundle",
        almavmm_shared::health::AgentOrigin::Unknown => "of unknown origin",
    };
    let agent_status = if h.agent.version == host_version { Status::Ok } else { Status::Warn };
    c.push(
        Check::new(
            Group::Guest,
            "guest.agent",
            agent_status,
            format!("almavmm-agent {} ({origin}), protocol {}", h.agent.version, h.protocol),
        )
        .fix(format!(
            "almavmm-host destroy {name} && almavmm-host up {name}  # agent {host_version} comes with this host"
        )),
    );

    let current = h.clocksource.current.clone().unwrap_or_else(|| "unknown".into());
    let (path_status, expected): (Status, Option<&str>) = match (h.clock_path.path, hv) {
        (ClockPath::VmmClock, _) => (Status::Ok, Some("vmm-clock")),
        (ClockPath::KvmClock, _) => (Status::Ok, Some("kvm-clock")),
        // No paravirtual clock: the guest keeps time by itself and falls behind whenever
        // the host stops running it. Expected under TCG; a problem under vmd.
        (ClockPath::None, Hypervisor::Vmd) => (Status::Fail, None),
        (ClockPath::None, _) => (Status::Warn, None),
    };
    c.push(Check::new(Group::Clock, "clock.path", path_status, h.clock_path.reason.clone()).fix(format!(
        "almavmm-host sync {name}  # after every host suspend; or run the guest where a paravirtual clock is offered"
    )));
    let source_ok = expected.is_none_or(|e| e == current);
    let source = Check::new(
        Group::Clock,
        "clock.source",
        if source_ok { Status::Ok } else { Status::Warn },
        match expected {
            Some(e) if !source_ok => format!("current clocksource is {current}, expected {e}"),
            _ => format!("current clocksource {current} (available: {})", h.clocksource.available.join(" ")),
        },
    );
    c.push(match expected {
        Some("vmm-clock") => source.fix(format!("ssh {name}.almavmm sudo almavmm-agent kmod load")),
        Some(e) => source.fix(format!(
            "ssh {name}.almavmm 'echo {e} | sudo tee /sys/devices/system/clocksource/clocksource0/current_clocksource'"
        )),
        None => source,
    });

    let n = &h.network;
    c.push(match &n.address {
        Some(a) => Check::new(
            Group::Network,
            "network.address",
            Status::Ok,
            format!("{} on {}", a, n.interface.as_deref().unwrap_or("?")),
        ),
        None => Check::new(Group::Network, "network.address", Status::Fail, "no IPv4 address: DHCP did not answer")
            .fix(format!("almavmm-host console {name}  # look for the DHCP client's messages")),
    });
    c.push(match &n.default_route {
        Some(gw) => Check::new(Group::Network, "network.route", Status::Ok, format!("default route via {gw}")),
        None => Check::new(Group::Network, "network.route", Status::Fail, "no default route")
            .fix(format!("ssh {name}.almavmm sudo almavmm-agent setup")),
    });
    c.push(if n.dns_servers.is_empty() {
        Check::new(Group::Network, "network.dns", Status::Fail, "no DNS server configured")
            .fix(format!("ssh {name}.almavmm sudo almavmm-agent setup"))
    } else {
        Check::new(Group::Network, "network.dns", Status::Ok, format!("DNS servers {}", n.dns_servers.join(", ")))
    });
    let r = &n.resolve;
    c.push(if r.ok {
        Check::new(
            Group::Network,
            "network.resolve",
            Status::Ok,
            format!("{} resolves to {} ({} ms)", r.name, r.addresses.join(", "), r.elapsed_ms),
        )
    } else {
        // Often just a host without internet access; the guest itself is fine.
        Check::new(
            Group::Network,
            "network.resolve",
            Status::Warn,
            format!("{} does not resolve: {}", r.name, r.error.as_deref().unwrap_or("no address")),
        )
        .fix(match hv {
            Hypervisor::Vmd => "almavmm-host host setup  # installs the pf DNS redirect for guests".to_string(),
            _ => "check the host's own DNS (QEMU's user network forwards to it)".to_string(),
        })
    });
    c.push(match &n.gateway {
        Some(g) if g.ok => Check::new(
            Group::Network,
            "network.gateway",
            Status::Ok,
            format!("gateway {} answers ({})", g.address, g.detail),
        ),
        Some(g) => Check::new(
            Group::Network,
            "network.gateway",
            Status::Fail,
            format!("gateway {} does not answer: {}", g.address, g.detail),
        )
        .fix(match hv {
            Hypervisor::Vmd => "almavmm-host host setup  # forwarding and pf NAT for guests".to_string(),
            _ => format!("almavmm-host stop {name} && almavmm-host start {name}"),
        }),
        None => Check::new(Group::Network, "network.gateway", Status::Fail, "no gateway to test (no default route)"),
    });
    c
}

/// Judge a clock measurement.
pub fn offset_check(name: &str, m: &Measured) -> Check {
    let status = match Verdict::of_offset(m.offset_ns) {
        Verdict::Ok => Status::Ok,
        Verdict::Warn => Status::Warn,
        Verdict::Fail => Status::Fail,
    };
    let dir = if m.offset_ns < 0 { "behind" } else { "ahead of" };
    Check::new(
        Group::Clock,
        "clock.offset",
        status,
        format!(
            "guest is {} {dir} the host (±{:.1} ms, best of {} rounds)",
            human_offset(m.offset_ns.abs()).trim_start_matches('+'),
            m.error_bound_ns as f64 / 1e6,
            m.rounds
        ),
    )
    .fix(format!("almavmm-host sync {name}"))
}

#[cfg(test)]
mod tests;
