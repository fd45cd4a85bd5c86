use almavmm_shared::health::*;

use super::*;

fn report(path: ClockPath, current: &str) -> HealthReport {
    HealthReport {
        protocol: almavmm_shared::PROTOCOL_VERSION,
        protocol_minor: almavmm_shared::PROTOCOL_MINOR,
        agent: AgentInfo { version: "0.1.0".into(), commit: "abc".into(), origin: AgentOrigin::Prebuilt },
        generated_at_ns: 0,
        distro: DistroInfo {
            id: "almalinux".into(),
            version_id: "9.6".into(),
            pretty_name: "AlmaLinux 9.6 (Sage Margay)".into(),
            package_manager: Some(PackageManager::Dnf),
        },
        kernel: "5.14.0-570.12.1.el9_6.x86_64".into(),
        clocksource: ClocksourceInfo { current: Some(current.into()), available: vec![current.into(), "tsc".into()] },
        clock_path: ClockPathInfo { path, reason: "test".into() },
        module: ModuleState::default(),
        clock_events: vec![],
        network: NetworkInfo {
            interface: Some("eth0".into()),
            address: Some("100.64.1.3/31".into()),
            default_route: Some("100.64.1.2".into()),
            dns_servers: vec!["100.64.1.2".into()],
            resolve: ResolveCheck {
                name: "repo.almalinux.org".into(),
                ok: true,
                addresses: vec!["198.51.100.7".into()],
                error: None,
                elapsed_ms: 12,
            },
            gateway: Some(GatewayCheck { address: "100.64.1.2".into(), ok: true, detail: "ICMP echo reply".into() }),
        },
        setup: None,
        uptime_secs: 10.0,
        memory: MemoryInfo {
            total_kib: 2_000_000,
            available_kib: 1_500_000,
            swap: Some(SwapInfo { total_kib: 1_048_576, used_kib: 0 }),
            oom_kills: Some(0),
        },
        load: Some(LoadInfo { one: 0.3, five: 0.2, fifteen: 0.1, cpus: 1 }),
        filesystems: Some(vec![fs("/", 10 << 30, 5 << 30, 655_360, 600_000)]),
        units: Some(UnitsInfo { failed: vec![], error: None }),
    }
}

/// A filesystem of `size` bytes with `avail` available (none reserved) and the given inodes.
fn fs(mount: &str, size: u64, avail: u64, inodes: u64, inodes_free: u64) -> FilesystemInfo {
    FilesystemInfo {
        mount_point: mount.into(),
        device: "/dev/vda1".into(),
        fs_type: "ext4".into(),
        size_bytes: size,
        available_bytes: avail,
        used_bytes: Some(size - avail),
        inodes: Some(inodes),
        inodes_free: Some(inodes_free),
    }
}

fn by_id<'a>(c: &'a [Check], id: &str) -> &'a Check {
    c.iter().find(|x| x.id == id).unwrap_or_else(|| panic!("no {id}"))
}

#[test]
fn healthy_vmd_guest_passes_every_check() {
    let c = health_checks("alma", &report(ClockPath::VmmClock, "vmm-clock"), Hypervisor::Vmd, "0.1.0");
    assert!(c.iter().all(|x| x.status == Status::Ok && x.fix.is_none()), "{c:#?}");
}

#[test]
fn wrong_clocksource_on_vmd_warns_with_the_command_that_fixes_it() {
    let c = health_checks("alma", &report(ClockPath::VmmClock, "tsc"), Hypervisor::Vmd, "0.1.0");
    let s = by_id(&c, "clock.source");
    assert_eq!(s.status, Status::Warn);
    assert_eq!(s.finding, "current clocksource is tsc, expected vmm-clock");
    assert_eq!(s.fix.as_deref(), Some("ssh alma.almavmm sudo almavmm-agent kmod load"));
}

#[test]
fn no_paravirtual_clock_fails_on_vmd_but_only_warns_under_tcg() {
    let r = report(ClockPath::None, "tsc");
    assert_eq!(by_id(&health_checks("a", &r, Hypervisor::Vmd, "0.1.0"), "clock.path").status, Status::Fail);
    assert_eq!(by_id(&health_checks("a", &r, Hypervisor::QemuTcg, "0.1.0"), "clock.path").status, Status::Warn);
    // Without a paravirtual clock any clocksource is what it is: no complaint about it.
    assert_eq!(by_id(&health_checks("a", &r, Hypervisor::QemuTcg, "0.1.0"), "clock.source").status, Status::Ok);
}

#[test]
fn network_problems_are_found() {
    let mut r = report(ClockPath::KvmClock, "kvm-clock");
    r.network.dns_servers.clear();
    r.network.resolve.ok = false;
    r.network.resolve.error = Some("Temporary failure in name resolution".into());
    r.network.gateway = Some(GatewayCheck { address: "100.64.1.2".into(), ok: false, detail: "no reply".into() });
    let c = health_checks("alma", &r, Hypervisor::Vmd, "0.1.0");
    assert_eq!(by_id(&c, "network.dns").status, Status::Fail);
    assert_eq!(by_id(&c, "network.resolve").status, Status::Warn);
    assert!(by_id(&c, "network.resolve").fix.as_deref().unwrap().starts_with("almavmm-host host setup"));
    assert_eq!(by_id(&c, "network.gateway").status, Status::Fail);
}

#[test]
fn older_agent_is_a_warning() {
    let c = health_checks("alma", &report(ClockPath::KvmClock, "kvm-clock"), Hypervisor::Vmd, "0.2.0");
    assert_eq!(by_id(&c, "guest.agent").status, Status::Warn);
}

#[test]
fn offset_thresholds() {
    let m = |ns| Measured { offset_ns: ns, error_bound_ns: 800_000, rtt_ns: 1_600_000, rounds: 16 };
    assert_eq!(offset_check("a", &m(5_000_000)).status, Status::Ok);
    assert_eq!(offset_check("a", &m(-150_000_000)).status, Status::Warn);
    let c = offset_check("a", &m(-30_012_000_000));
    assert_eq!(c.status, Status::Fail);
    assert_eq!(c.finding, "guest is 30.012 s behind the host (±0.8 ms, best of 16 rounds)");
    assert_eq!(c.fix.as_deref(), Some("almavmm-host sync a"));
}

#[test]
fn rendering_shows_fixes_and_counts_and_paints_only_when_asked() {
    let m = Measured { offset_ns: -30_000_000_000, error_bound_ns: 1_000_000, rtt_ns: 2_000_000, rounds: 8 };
    let checks =
        vec![Check::new(Group::Host, "host.backend", Status::Ok, "QEMU 10.0.2; KVM"), offset_check("alma", &m)];
    let r = Report::new(Some("alma".into()), checks, Some(m));
    assert!(r.failed());
    let plain = render::render(&r, false);
    assert_eq!(
        plain,
        "doctor: alma\n  ok   host.backend  QEMU 10.0.2; KVM\n  FAIL clock.offset  guest is 30.000 s behind the host (±1.0 ms, best of 8 rounds)\n                     fix: almavmm-host sync alma\n1 ok, 0 warn, 1 fail\n"
    );
    assert!(!plain.contains('\x1b'));
    assert!(render::render(&r, true).contains("\x1b[1;31mFAIL\x1b[0m"));
}

#[test]
fn a_reachable_guest_is_checked_in_the_order_an_unreachable_one_is_skipped() {
    let c = health_checks("alma", &report(ClockPath::VmmClock, "vmm-clock"), Hypervisor::Vmd, "0.1.0");
    let ids: Vec<&str> = c.iter().map(|x| x.id.as_str()).collect();
    let skipped = skipped_guest_checks("down");
    // clock.offset comes from the clock measurement, not from the agent's report.
    let expected: Vec<&str> = skipped.iter().map(|x| x.id.as_str()).filter(|id| *id != "clock.offset").collect();
    assert_eq!(ids, expected);
    let groups: Vec<Group> = c.iter().map(|x| x.group).collect();
    let expected_groups: Vec<Group> = skipped.iter().filter(|x| x.id != "clock.offset").map(|x| x.group).collect();
    assert_eq!(groups, expected_groups);
}
