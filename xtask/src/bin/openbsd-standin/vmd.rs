//! What vmd itself does for the stand-ins: read vm.conf into its VM list (vmd.c
//! `vmd_reload`, `vm_register`, config.c), start a VM (here: QEMU under TCG with one vCPU,
//! on a tap device addressed as priv.c does, with dnsmasq answering DHCP as vmd's dhcp.c),
//! force it off, and notice when its process has ended (vmd.c `vmd_sigchld` → `vm_stop`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use almavmm_shared::runner::Cmd;
use anyhow::{Context, bail};

use crate::conf::{self, Config};
use crate::state::{Known, Run, State, VmEntry, alive};

/// vmd.h `VMD_CONF`.
pub const VM_CONF: &str = "/etc/vm.conf";
/// vmd.h `VM_DEFAULT_BIOS`, installed by `fw_update vmm`.
pub const FIRMWARE: &str = "/etc/firmware/vmm-bios";
/// vmd.h `VMD_DHCP_PREFIX`.
pub const DEFAULT_PREFIX: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

/// Mark VMs whose process ended as stopped, and take their taps and DHCP servers down
/// (vmd closes the tap, which destroys it).
pub fn reap(st: &mut State) {
    for vm in &mut st.vms {
        if let Some(run) = &vm.run
            && !alive(run.pid)
        {
            teardown(run);
            vm.run = None;
            vm.shutdown = false;
        }
    }
}

fn teardown(run: &Run) {
    for pid in &run.dnsmasq {
        let _ = Cmd::new("kill").arg(pid.to_string()).timeout(Duration::from_secs(5)).output();
    }
    for tap in &run.taps {
        let _ = Cmd::new("ip").args(["link", "del", tap]).timeout(Duration::from_secs(5)).output();
    }
}

/// uid and gid of `owner user[:group]` (parse.y: `owner :group` leaves the user root).
fn owner_ids(owner: Option<&str>) -> anyhow::Result<(u32, Option<u32>)> {
    let Some(o) = owner else { return Ok((0, None)) };
    let (user, group) = match o.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (o, None),
    };
    let uid = if user.is_empty() {
        0
    } else {
        nix::unistd::User::from_name(user)?.with_context(|| format!("invalid user name: {user}"))?.uid.as_raw()
    };
    let gid = match group {
        None => None,
        Some(g) => {
            Some(nix::unistd::Group::from_name(g)?.with_context(|| format!("invalid group name: {g}"))?.gid.as_raw())
        }
    };
    Ok((uid, gid))
}

/// vmd.c `vmd_reload` with a configuration that parsed: VMs vmd knows keep their id
/// (`vmd_known`, per name and uid), new ones get the next; VMs gone from the
/// configuration are removed unless running (those stay until they stop).
pub fn apply_config(st: &mut State, cfg: &Config) -> anyhow::Result<()> {
    st.prefix = cfg.prefix;
    let mut vms = Vec::new();
    for c in &cfg.vms {
        let (uid, gid) = owner_ids(c.owner.as_deref())?;
        if !c.disabled {
            bail!(
                "openbsd-standin: not modelled, refusing to guess: vm \"{}\" is not `disable`d, and vmd's start of enabled VMs (staggered, waiting) is not part of the stand-in",
                c.name
            );
        }
        let existing = st.vms.iter().find(|v| v.name == c.name);
        let id = match st.known.iter().find(|k| k.name == c.name && k.uid == uid) {
            Some(k) => k.id,
            None => {
                let id = st.known.iter().map(|k| k.id).max().unwrap_or(0) + 1;
                st.known.push(Known { name: c.name.clone(), uid, id });
                id
            }
        };
        vms.push(VmEntry {
            name: c.name.clone(),
            id,
            uid,
            gid,
            memory: c.memory,
            disks: c.disks.clone(),
            cdrom: c.cdrom.clone(),
            local_interfaces: c.local_interfaces,
            disabled: c.disabled,
            shutdown: existing.is_some_and(|e| e.shutdown),
            run: existing.and_then(|e| e.run.clone()),
        });
    }
    for old in &st.vms {
        if old.run.is_some() && !vms.iter().any(|v| v.name == old.name) {
            vms.push(old.clone());
        }
    }
    st.vms = vms;
    Ok(())
}

/// vmd starting (`rcctl start vmd`, or `vmd`): parse /etc/vm.conf, as vmd's parent does
/// before it answers on its socket. The error is parse.y's.
pub fn start_daemon(st: &mut State) -> anyhow::Result<()> {
    let cfg = conf::parse_file(Path::new(VM_CONF)).map_err(|e| anyhow::anyhow!("{e}"))?;
    st.vms.clear();
    st.known.clear();
    apply_config(st, &cfg)?;
    st.vmd_running = true;
    Ok(())
}

/// Why the VM's disk process would die at once in vmd (vioqcow2.c `qc2_open`, vioblk's
/// `xlate`), from the product's own qcow2 reader.
///
/// Only what kills the VM counts: the zero flag, say, vmd ignores (it reads the wrong
/// bytes there, silently), and a relative backing path is resolved, not refused.
fn disk_fatal(disk: &Path) -> Option<String> {
    use almavmm_host::image::inspect::ProblemCode as P;
    let insp = almavmm_host::image::inspect::inspect(disk).ok()?;
    insp.vmd
        .problems
        .iter()
        .find(|p| !matches!(p.code, P::ZeroClusters | P::RelativeBacking))
        .map(|p| p.message.clone())
}

/// The first `tapN` not in use (vmd's `opentap` walks /dev/tap0..MAX_TAP-1).
fn free_tap(st: &State) -> anyhow::Result<String> {
    let used: Vec<&String> = st.vms.iter().filter_map(|v| v.run.as_ref()).flat_map(|r| &r.taps).collect();
    (0..256)
        .map(|n| format!("tap{n}"))
        .find(|t| !used.contains(&t) && !Path::new("/sys/class/net").join(t).exists())
        .context("no free tap device (vmd.h MAX_TAP is 256)")
}

/// The pty vmd would hand out: the lowest free `ttyp0`…`ttypf`, `ttyq0`….
fn free_tty(st: &State) -> String {
    let used: Vec<&String> = st.vms.iter().filter_map(|v| v.run.as_ref()).map(|r| &r.tty).collect();
    let digits = "0123456789abcdef";
    for bank in "pqrstuvwxyz".chars() {
        for d in digits.chars() {
            let t = format!("/dev/tty{bank}{d}");
            if !used.contains(&&t) {
                return t;
            }
        }
    }
    "/dev/ttyp0".into()
}

pub fn vm_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("vms").join(name)
}

/// The QEMU command line standing in for vmd's VM process: one vCPU under TCG (vmd runs
/// one vCPU, and TCG offers no paravirtual clock, as this rig wants), the firmware from
/// `fw_update`, the disks as virtio block devices, the cdrom, each local interface a tap
/// with a virtio NIC, the serial console on a socket (for `vmctl console`) and a log.
pub fn qemu_args(vm: &VmEntry, taps: &[String], dir: &Path) -> Vec<String> {
    let p = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("{},process=vmd-{}", vm.name, vm.name),
        "-machine".into(),
        "pc,accel=tcg".into(),
        "-cpu".into(),
        "max".into(),
        "-smp".into(),
        "1".into(),
        "-m".into(),
        format!("{}M", vm.memory >> 20),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-vga".into(),
        "none".into(),
        "-rtc".into(),
        "base=utc,clock=host".into(),
        "-bios".into(),
        FIRMWARE.into(),
    ];
    // vmd's vioblk offers neither DISCARD nor WRITE_ZEROES, so a guest never makes vmd
    // write the qcow2 zero flag (which vmd would misread); QEMU's virtio-blk must not
    // offer them either, or the disk it leaves behind is one vmd could not run.
    for (i, d) in vm.disks.iter().enumerate() {
        a.extend([
            "-drive".into(),
            format!("file={},if=none,id=disk{i},format=qcow2,cache=writeback", p(d)),
            "-device".into(),
            format!("virtio-blk-pci,drive=disk{i},discard=off,write-zeroes=off"),
        ]);
    }
    if let Some(c) = &vm.cdrom {
        a.extend(["-drive".into(), format!("file={},media=cdrom,readonly=on,if=ide", p(c))]);
    }
    for (i, t) in taps.iter().enumerate() {
        a.extend([
            "-netdev".into(),
            format!("tap,id=net{i},ifname={t},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=net{i}"),
        ]);
    }
    a.extend([
        "-chardev".into(),
        format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            p(&dir.join("console.sock")),
            p(&dir.join("console.log"))
        ),
        "-serial".into(),
        "chardev:serial0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p(&dir.join("qmp.sock"))),
        "-pidfile".into(),
        p(&dir.join("qemu.pid")),
        "-daemonize".into(),
    ]);
    a
}

/// dnsmasq as vmd's dhcp.c: the guest gets the host address + 1 on a /31, the host
/// address as router and DNS server, an infinite lease; no DNS is served (`--port=0`), as
/// nothing answers DNS on a vmd tap unless pf redirects it.
pub fn dnsmasq_args(tap: &str, host: Ipv4Addr, dir: &Path) -> Vec<String> {
    let guest = Ipv4Addr::from(u32::from(host) + 1);
    vec![
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        format!("--interface={tap}"),
        "--bind-interfaces".into(),
        "--except-interface=lo".into(),
        "--user=root".into(),
        "--dhcp-authoritative".into(),
        format!("--dhcp-range={guest},{guest},255.255.255.254,infinite"),
        format!("--dhcp-option=option:router,{host}"),
        format!("--dhcp-option=option:dns-server,{host}"),
        format!("--dhcp-leasefile={}", dir.join(format!("{tap}.leases")).display()),
        format!("--pid-file={}", dir.join(format!("{tap}.dnsmasq.pid")).display()),
        format!("--log-facility={}", dir.join(format!("{tap}.dnsmasq.log")).display()),
    ]
}

/// Start `st.vms[i]`: taps, DHCP, QEMU. On success the tty and id for vmctl's message.
pub fn start_vm(st: &mut State, i: usize, state_dir: &Path) -> anyhow::Result<(u32, String)> {
    let vm = st.vms[i].clone();
    let dir = vm_dir(state_dir, &vm.name);
    std::fs::create_dir_all(&dir)?;
    let prefix = st.prefix.unwrap_or(DEFAULT_PREFIX);
    let mut run = Run { pid: 0, tty: free_tty(st), taps: Vec::new(), dnsmasq: Vec::new() };
    let result = (|| -> anyhow::Result<()> {
        for idx in 0..vm.local_interfaces {
            let tap = free_tap(st)?;
            run.taps.push(tap.clone());
            let host = conf::host_address(prefix, vm.id, idx);
            // priv.c `vm_priv_ifconfig`: description `vm%u-if%u-%s` cut to 63 characters.
            let desc: String = format!("vm{}-if{}-{}", vm.id, idx, vm.name).chars().take(63).collect();
            let ip = |args: &[&str]| Cmd::new("ip").args(args).timeout(Duration::from_secs(10)).run();
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ip(&["link", "set", "dev", &tap, "alias", &desc])?;
            ip(&["addr", "add", &format!("{host}/31"), "dev", &tap])?;
            ip(&["link", "set", "dev", &tap, "up"])?;
            Cmd::new("dnsmasq")
                .args(dnsmasq_args(&tap, host, &dir))
                .timeout(Duration::from_secs(20))
                .hint_if_missing("apt-get install dnsmasq-base")
                .run()?;
            let pidfile = dir.join(format!("{tap}.dnsmasq.pid"));
            let pid = std::fs::read_to_string(&pidfile)
                .with_context(|| format!("dnsmasq left no {}", pidfile.display()))?
                .trim()
                .parse()?;
            run.dnsmasq.push(pid);
        }
        let _ = std::fs::remove_file(dir.join("qemu.pid"));
        Cmd::new("qemu-system-x86_64")
            .args(qemu_args(&vm, &run.taps, &dir))
            .timeout(Duration::from_secs(60))
            .hint_if_missing("apt-get install qemu-system-x86")
            .run()?;
        run.pid = std::fs::read_to_string(dir.join("qemu.pid"))
            .context("QEMU wrote no pidfile")?
            .trim()
            .parse()
            .context("QEMU's pidfile")?;
        Ok(())
    })();
    if let Err(e) = result {
        teardown(&run);
        return Err(e);
    }
    let tty = run.tty.clone();
    st.vms[i].run = Some(run);
    st.vms[i].shutdown = false;
    Ok((vm.id, tty))
}

/// Checks vmd makes before a VM process runs, and the disk process's fatal checks.
pub enum Missing {
    /// vmd.h `VMD_BIOS_MISSING`.
    Bios,
    /// `VMD_DISK_MISSING`.
    Disk,
    /// `VMD_CDROM_MISSING`.
    Cdrom,
}

pub fn precheck(vm: &VmEntry) -> Result<(), Missing> {
    if !Path::new(FIRMWARE).is_file() {
        return Err(Missing::Bios);
    }
    if vm.disks.iter().any(|d| !d.is_file()) {
        return Err(Missing::Disk);
    }
    if vm.cdrom.as_ref().is_some_and(|c| !c.is_file()) {
        return Err(Missing::Cdrom);
    }
    Ok(())
}

/// A disk vmd's VM process would die on right after `started successfully`.
pub fn fatal_disk(vm: &VmEntry) -> Option<String> {
    vm.disks.iter().find_map(|d| disk_fatal(d).map(|why| format!("{}: {why}", d.display())))
}

/// Force the VM off (vmd's `terminate_vm`: the VM process is killed) and wait, bounded.
pub fn kill_vm(st: &mut State, i: usize) -> anyhow::Result<()> {
    let Some(run) = st.vms[i].run.clone() else { return Ok(()) };
    let _ = Cmd::new("kill").args(["-KILL", &run.pid.to_string()]).timeout(Duration::from_secs(5)).output();
    let gone = almavmm_shared::wait::wait_until(
        almavmm_shared::wait::Deadline::after(Duration::from_secs(30)),
        Duration::from_millis(50),
        || Ok::<_, std::convert::Infallible>((!alive(run.pid)).then_some(())),
    )?;
    if gone.is_none() {
        bail!("openbsd-standin: QEMU (pid {}) for {} did not end within 30 s of SIGKILL", run.pid, st.vms[i].name);
    }
    teardown(&run);
    st.vms[i].run = None;
    st.vms[i].shutdown = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmEntry {
        VmEntry {
            name: "e2e".into(),
            id: 1,
            uid: 0,
            gid: None,
            memory: 1536 << 20,
            disks: vec!["/h/vms/e2e/disk.qcow2".into()],
            cdrom: Some("/h/vms/e2e/seed.iso".into()),
            local_interfaces: 1,
            disabled: true,
            shutdown: false,
            run: None,
        }
    }

    fn value_of<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn qemu_runs_one_vcpu_under_tcg_on_the_tap() {
        let a = qemu_args(&vm(), &["tap0".into()], Path::new("/s/vms/e2e"));
        assert_eq!(value_of(&a, "-machine"), ["pc,accel=tcg"]);
        assert_eq!(value_of(&a, "-smp"), ["1"]);
        assert_eq!(value_of(&a, "-m"), ["1536M"]);
        assert_eq!(value_of(&a, "-bios"), [FIRMWARE]);
        assert_eq!(value_of(&a, "-netdev"), ["tap,id=net0,ifname=tap0,script=no,downscript=no"]);
        assert_eq!(
            value_of(&a, "-drive"),
            [
                "file=/h/vms/e2e/disk.qcow2,if=none,id=disk0,format=qcow2,cache=writeback",
                "file=/h/vms/e2e/seed.iso,media=cdrom,readonly=on,if=ide"
            ]
        );
        assert!(value_of(&a, "-device").contains(&"virtio-blk-pci,drive=disk0,discard=off,write-zeroes=off"));
        assert_eq!(a.last().unwrap(), "-daemonize");
    }

    #[test]
    fn dhcp_hands_out_the_host_address_plus_one_on_a_31() {
        let a = dnsmasq_args("tap0", "100.64.1.2".parse().unwrap(), Path::new("/s"));
        assert!(a.contains(&"--dhcp-range=100.64.1.3,100.64.1.3,255.255.255.254,infinite".to_string()));
        assert!(a.contains(&"--dhcp-option=option:router,100.64.1.2".to_string()));
        assert!(a.contains(&"--dhcp-option=option:dns-server,100.64.1.2".to_string()));
        assert!(a.contains(&"--port=0".to_string()));
    }

    #[test]
    fn ids_are_kept_per_name_and_uid_across_reloads() {
        let d = tempfile::NamedTempFile::new().unwrap();
        let conf = |names: &[&str]| {
            let text: String = names
                .iter()
                .map(|n| format!("vm \"{n}\" {{\n\tdisable\n\tdisk \"{}\"\n}}\n", d.path().display()))
                .collect();
            conf::parse_str("/etc/vm.conf", &text).unwrap()
        };
        let mut st = State::default();
        apply_config(&mut st, &conf(&["a", "b"])).unwrap();
        assert_eq!(st.vms.iter().map(|v| (v.name.as_str(), v.id)).collect::<Vec<_>>(), [("a", 1), ("b", 2)]);
        apply_config(&mut st, &conf(&["b", "c"])).unwrap();
        assert_eq!(st.vms.iter().map(|v| (v.name.as_str(), v.id)).collect::<Vec<_>>(), [("b", 2), ("c", 3)]);
        apply_config(&mut st, &conf(&["a"])).unwrap();
        assert_eq!(st.vms.iter().map(|v| (v.name.as_str(), v.id)).collect::<Vec<_>>(), [("a", 1)]);
    }

    #[test]
    fn enabled_vms_are_not_guessed_at() {
        let d = tempfile::NamedTempFile::new().unwrap();
        let cfg =
            conf::parse_str("/etc/vm.conf", &format!("vm \"a\" {{\n\tdisk \"{}\"\n}}\n", d.path().display())).unwrap();
        let e = apply_config(&mut State::default(), &cfg).unwrap_err().to_string();
        assert!(e.contains("refusing to guess"), "{e}");
    }
}
