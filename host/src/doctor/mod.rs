//! `doctor`: checks of host, guest, clock and network, each with a status, a one-line
//! finding and, when not ok, the exact command that fixes it.
//!
//! The checks are built from facts gathered first (backend answers, the agent's health
//! report, a clock measurement); judging them is pure and tested here. Rendering is in
//! `render.rs`.

pub mod render;
pub mod space;
pub mod system;

use almavmm_shared::clock::Verdict;
use almavmm_shared::health::{ClockPath, HealthReport};
use serde::Serialize;

pub use crate::backend::Hypervisor;
pub use crate::check::{Check, Group, Status};
use crate::clock::{Measured, human_offset};

/// JSON schema version of `doctor --json` (documented in `doctor --help`).
pub const SCHEMA: u32 = 1;

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
        (Group::Guest, "guest.disk"),
        (Group::Guest, "guest.memory"),
        (Group::Guest, "guest.load"),
        (Group::Guest, "guest.units"),
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

/// Judge the agent report: agent, disk, memory, load, units, clock path, clocksource and
/// network checks.
pub fn health_checks(name: &str, h: &HealthReport, hv: Hypervisor, host_version: &str) -> Vec<Check> {
    let mut c = vec![agent_check(name, h, host_version)];
    c.extend(system::checks(name, h));
    c.extend(clock_checks(name, h, hv));
    c.extend(network_checks(name, &h.network, hv));
    c
}

/// The agent in the guest should be the one this host carries.
fn agent_check(name: &str, h: &HealthReport, host_version: &str) -> Check {
    let origin = match h.agent.origin {
        almavmm_shared::health::AgentOrigin::Prebuilt => "prebuilt on the host",
        almavmm_shared::health::AgentOrigin::BuiltInGuest => "built in the guest from the source bundle",
        almavmm_shared::health::AgentOrigin::Unknown => "of unknown origin",
    };
    let agent_status = if h.agent.version == host_version { Status::Ok } else { Status::Warn };
    Check::new(
        Group::Guest,
        "guest.agent",
        agent_status,
        format!("almavmm-agent {} ({origin}), protocol {}", h.agent.version, h.protocol),
    )
    .fix(format!("almavmm-host destroy {name} && almavmm-host up {name}  # agent {host_version} comes with this host"))
}

/// The clock path, then whether the clocksource in use is the one that path calls for.
fn clock_checks(name: &str, h: &HealthReport, hv: Hypervisor) -> [Check; 2] {
    let (path_status, expected): (Status, Option<&str>) = match (h.clock_path.path, hv) {
        (ClockPath::VmmClock, _) => (Status::Ok, Some("vmm-clock")),
        (ClockPath::KvmClock, _) => (Status::Ok, Some("kvm-clock")),
        // No paravirtual clock: the guest keeps time by itself and falls behind whenever
        // the host stops running it. Expected under TCG; a problem under vmd.
        (ClockPath::None, Hypervisor::Vmd) => (Status::Fail, None),
        (ClockPath::None, _) => (Status::Warn, None),
    };
    let path = Check::new(Group::Clock, "clock.path", path_status, h.clock_path.reason.clone()).fix(format!(
        "almavmm-host sync {name}  # after every host suspend; or run the guest where a paravirtual clock is offered"
    ));
    [path, clocksource_check(name, h, expected)]
}

/// `expected`: the clocksource the clock path calls for, if any.
fn clocksource_check(name: &str, h: &HealthReport, expected: Option<&str>) -> Check {
    let current = h.clocksource.current.clone().unwrap_or_else(|| "unknown".into());
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
    match expected {
        Some("vmm-clock") => source.fix(format!("ssh {name}.almavmm sudo almavmm-agent kmod load")),
        Some(e) => source.fix(format!(
            "ssh {name}.almavmm 'echo {e} | sudo tee /sys/devices/system/clocksource/clocksource0/current_clocksource'"
        )),
        None => source,
    }
}

/// Address, route, DNS servers, name resolution and gateway, in the order a broken
/// network is best debugged.
fn network_checks(name: &str, n: &almavmm_shared::health::NetworkInfo, hv: Hypervisor) -> [Check; 5] {
    [
        address_check(name, n),
        route_check(name, n),
        dns_check(name, n),
        resolve_check(&n.resolve, hv),
        gateway_check(name, n.gateway.as_ref(), hv),
    ]
}

fn address_check(name: &str, n: &almavmm_shared::health::NetworkInfo) -> Check {
    match &n.address {
        Some(a) => Check::new(
            Group::Network,
            "network.address",
            Status::Ok,
            format!("{} on {}", a, n.interface.as_deref().unwrap_or("?")),
        ),
        None => Check::new(Group::Network, "network.address", Status::Fail, "no IPv4 address: DHCP did not answer")
            .fix(format!("almavmm-host console {name}  # look for the DHCP client's messages")),
    }
}

fn route_check(name: &str, n: &almavmm_shared::health::NetworkInfo) -> Check {
    match &n.default_route {
        Some(gw) => Check::new(Group::Network, "network.route", Status::Ok, format!("default route via {gw}")),
        None => Check::new(Group::Network, "network.route", Status::Fail, "no default route")
            .fix(format!("ssh {name}.almavmm sudo almavmm-agent setup")),
    }
}

fn dns_check(name: &str, n: &almavmm_shared::health::NetworkInfo) -> Check {
    if n.dns_servers.is_empty() {
        Check::new(Group::Network, "network.dns", Status::Fail, "no DNS server configured")
            .fix(format!("ssh {name}.almavmm sudo almavmm-agent setup"))
    } else {
        Check::new(Group::Network, "network.dns", Status::Ok, format!("DNS servers {}", n.dns_servers.join(", ")))
    }
}

fn resolve_check(r: &almavmm_shared::health::ResolveCheck, hv: Hypervisor) -> Check {
    if r.ok {
        return Check::new(
            Group::Network,
            "network.resolve",
            Status::Ok,
            format!("{} resolves to {} ({} ms)", r.name, r.addresses.join(", "), r.elapsed_ms),
        );
    }
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
}

fn gateway_check(name: &str, gateway: Option<&almavmm_shared::health::GatewayCheck>, hv: Hypervisor) -> Check {
    match gateway {
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
    }
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
