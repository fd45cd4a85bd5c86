//! `almavmm-agent health`: everything the host wants to know, as the versioned
//! `HealthReport` of `almavmm_shared::health`, or as text for people.

use std::fmt::Write as _;

use almavmm_shared::health::{AgentInfo, AgentOrigin, ClockEvent, ClockPath, HealthReport, ModuleState, NetworkInfo};
use almavmm_shared::paths;
use almavmm_shared::setup::SetupReport;

use crate::sys::distro::OsRelease;
use crate::sys::sysroot::SysRoot;

/// How many clock events the report carries.
pub const EVENTS_IN_REPORT: usize = 20;

pub fn gather(root: &SysRoot, resolve_name: &str) -> anyhow::Result<HealthReport> {
    let os = OsRelease::read(root)?;
    let kernel = crate::kmod::running_kernel(root)?;
    let evidence = crate::clock::path::Evidence::gather(root)?;
    let clock_path = crate::clock::path::decide(&evidence);
    let module = crate::kmod::Module::new(root.clone(), kernel.clone()).status();
    let setup: Option<SetupReport> = root.read_optional(paths::SETUP_JSON)?.and_then(|t| serde_json::from_str(&t).ok());
    let origin =
        root.read_optional(paths::AGENT_ORIGIN)?.map(|t| AgentOrigin::from_marker(&t)).unwrap_or(AgentOrigin::Unknown);
    let system = crate::sys::system::gather(root);
    Ok(HealthReport {
        protocol: almavmm_shared::PROTOCOL_VERSION,
        protocol_minor: almavmm_shared::PROTOCOL_MINOR,
        agent: AgentInfo { version: almavmm_shared::VERSION.into(), commit: crate::GIT_COMMIT.into(), origin },
        generated_at_ns: crate::clock::timekeeping::realtime_ns(),
        distro: os.info(),
        kernel,
        clocksource: evidence.clocksources,
        clock_path,
        module,
        clock_events: crate::clock::events::read_last(root, EVENTS_IN_REPORT),
        network: crate::net::gather(root, resolve_name),
        setup,
        uptime_secs: system.uptime_secs,
        memory: system.memory,
        load: Some(system.load),
        filesystems: Some(system.filesystems),
        units: Some(crate::sys::units::gather(root)),
    })
}

fn yn(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The report for people.
pub fn render(r: &HealthReport) -> String {
    let mut o = String::new();
    write_agent_and_distro(&mut o, r);
    write_clock(&mut o, r);
    write_module(&mut o, &r.module);
    write_network(&mut o, &r.network);
    write_system(&mut o, r);
    write_setup(&mut o, r.setup.as_ref());
    write_clock_events(&mut o, &r.clock_events);
    o
}

fn write_agent_and_distro(o: &mut String, r: &HealthReport) {
    let origin = match r.agent.origin {
        AgentOrigin::Prebuilt => "prebuilt on the host",
        AgentOrigin::BuiltInGuest => "built in the guest",
        AgentOrigin::Unknown => "origin unknown",
    };
    let _ =
        writeln!(o, "agent       {} (commit {}), protocol {}, {origin}", r.agent.version, r.agent.commit, r.protocol);
    let _ = writeln!(o, "distro      {} (kernel {})", r.distro.pretty_name, r.kernel);
}

fn write_clock(o: &mut String, r: &HealthReport) {
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
}

fn write_module(o: &mut String, m: &ModuleState) {
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
}

fn write_network(o: &mut String, n: &NetworkInfo) {
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
}

fn write_system(o: &mut String, r: &HealthReport) {
    let _ = writeln!(
        o,
        "system      up {:.0} s, memory {} MiB available of {} MiB",
        r.uptime_secs,
        r.memory.available_kib / 1024,
        r.memory.total_kib / 1024
    );
    if let Some(s) = r.memory.swap {
        let oom = match r.memory.oom_kills {
            Some(0) => "no OOM kill since boot".to_string(),
            Some(n) => format!("{n} OOM kills since boot"),
            None => "OOM kills not counted by this kernel".to_string(),
        };
        let _ = writeln!(o, "            swap {} MiB used of {} MiB, {oom}", s.used_kib / 1024, s.total_kib / 1024);
    }
    if let Some(l) = r.load {
        let _ = writeln!(o, "load        {:.2} {:.2} {:.2} on {} CPUs", l.one, l.five, l.fifteen, l.cpus);
    }
    for f in r.filesystems.iter().flatten() {
        let inodes = f.inode_use_percent().map(|p| format!(", inodes {p}% used")).unwrap_or_default();
        let _ = writeln!(
            o,
            "disk        {} ({} on {}): {} MiB free of {} MiB, {}% used{inodes}",
            f.mount_point,
            f.fs_type,
            f.device,
            f.available_bytes >> 20,
            f.size_bytes >> 20,
            f.block_use_percent().unwrap_or(0)
        );
    }
    if let Some(u) = &r.units {
        let line = match (&u.error, u.failed.as_slice()) {
            (Some(e), _) => format!("unknown ({e})"),
            (None, []) => "no failed units".to_string(),
            (None, failed) => format!("failed: {}", failed.join(" ")),
        };
        let _ = writeln!(o, "units       {line}");
    }
}

fn write_setup(o: &mut String, setup: Option<&SetupReport>) {
    match setup {
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
}

fn write_clock_events(o: &mut String, events: &[ClockEvent]) {
    if !events.is_empty() {
        let _ = writeln!(o, "clock events (newest last)");
        for e in events {
            let when = almavmm_shared::calendar::utc_timestamp(e.at_ns.div_euclid(1_000_000_000));
            let _ = writeln!(o, "  {when}Z  {}", e.detail);
        }
    }
}
