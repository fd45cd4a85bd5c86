//! `almavmm-agent health`: everything the host wants to know, as the versioned
//! `HealthReport` of `almavmm_shared::health`, or as text for people.

use std::fmt::Write as _;

use almavmm_shared::health::{AgentInfo, AgentOrigin, ClockPath, HealthReport};
use almavmm_shared::paths;
use almavmm_shared::setup::SetupReport;

use crate::distro::OsRelease;
use crate::sysroot::SysRoot;

/// How many clock events the report carries.
pub const EVENTS_IN_REPORT: usize = 20;

pub fn gather(root: &SysRoot, resolve_name: &str) -> anyhow::Result<HealthReport> {
    let os = OsRelease::read(root)?;
    let kernel = crate::kmod::running_kernel(root)?;
    let evidence = crate::clockpath::Evidence::gather(root)?;
    let clock_path = crate::clockpath::decide(&evidence);
    let module = crate::kmod::Module::new(root.clone(), kernel.clone()).status();
    let setup: Option<SetupReport> = root.read_optional(paths::SETUP_JSON)?.and_then(|t| serde_json::from_str(&t).ok());
    let origin =
        root.read_optional(paths::AGENT_ORIGIN)?.map(|t| AgentOrigin::from_marker(&t)).unwrap_or(AgentOrigin::Unknown);
    Ok(HealthReport {
        protocol: almavmm_shared::PROTOCOL_VERSION,
        agent: AgentInfo { version: almavmm_shared::VERSION.into(), commit: crate::GIT_COMMIT.into(), origin },
        generated_at_ns: crate::timekeeping::realtime_ns(),
        distro: os.info(),
        kernel,
        clocksource: evidence.clocksources,
        clock_path,
        module,
        clock_events: crate::events::read_last(root, EVENTS_IN_REPORT),
        network: crate::net::gather(root, resolve_name),
        setup,
        uptime_secs: root.read_optional("/proc/uptime")?.map(|t| crate::procfs::uptime_secs(&t)).unwrap_or(0.0),
        memory: root.read_optional("/proc/meminfo")?.map(|t| crate::procfs::meminfo(&t)).unwrap_or_default(),
    })
}

fn yn(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The report for people.
pub fn render(r: &HealthReport) -> String {
    let mut o = String::new();
    let origin = match r.agent.origin {
        AgentOrigin::Prebuilt => "prebuilt on the host",
        AgentOrigin::BuiltInGuest => "built in the guest",
        AgentOrigin::Unknown => "origin unknown",
    };
    let _ =
        writeln!(o, "agent       {} (commit {}), protocol {}, {origin}", r.agent.version, r.agent.commit, r.protocol);
    let _ = writeln!(o, "distro      {} (kernel {})", r.distro.pretty_name, r.kernel);
    let _ = writeln!(
        o,
        "clock       {} (available: {})",
        r.clocksource.current.as_deref().unwrap_or("unknown"),
        r.clocksource.available.join(" ")
    );
    let path = match r.clock_path.path {
        ClockPath::KvmClock => "kvm-clock",
        ClockPath::VmmClock => "vmm_clock module",
        ClockPath::None => "none",
    };
    let _ = writeln!(o, "clock path  {path}: {}", r.clock_path.reason);
    let m = &r.module;
    let _ = writeln!(
        o,
        "module      built {}, installed {}, loaded {}, persisted {}, hook {}",
        yn(m.built),
        yn(m.installed),
        yn(m.loaded),
        yn(m.persisted),
        yn(m.hook_installed)
    );
    if let Some(e) = &m.load_error {
        let _ = writeln!(o, "            load error: {e}");
    }
    let n = &r.network;
    let _ = writeln!(
        o,
        "network     {} {} via {}, DNS {}",
        n.interface.as_deref().unwrap_or("(no default route)"),
        n.address.as_deref().unwrap_or("-"),
        n.default_route.as_deref().unwrap_or("-"),
        if n.dns_servers.is_empty() { "none".to_string() } else { n.dns_servers.join(" ") }
    );
    let resolved = if n.resolve.ok {
        format!("{} resolves to {}", n.resolve.name, n.resolve.addresses.join(" "))
    } else {
        format!("{} does not resolve: {}", n.resolve.name, n.resolve.error.as_deref().unwrap_or("?"))
    };
    let _ = writeln!(o, "            {resolved} ({} ms)", n.resolve.elapsed_ms);
    let _ = writeln!(
        o,
        "system      up {:.0} s, memory {} MiB available of {} MiB",
        r.uptime_secs,
        r.memory.available_kib / 1024,
        r.memory.total_kib / 1024
    );
    match &r.setup {
        None => {
            let _ = writeln!(o, "setup       never ran");
        }
        Some(s) => {
            let state = if !s.finished {
                "unfinished"
            } else if s.succeeded() {
                "done"
            } else {
                "finished with failures"
            };
            let _ = writeln!(o, "setup       {state}");
            for st in &s.steps {
                let _ = writeln!(o, "  {:<20} {:<9} {}", st.step, st.outcome.to_string(), st.detail);
            }
        }
    }
    if !r.clock_events.is_empty() {
        let _ = writeln!(o, "clock events (newest last)");
        for e in &r.clock_events {
            let when = almavmm_shared::calendar::utc_timestamp(e.at_ns.div_euclid(1_000_000_000));
            let _ = writeln!(o, "  {when}Z  {}", e.detail);
        }
    }
    o
}
