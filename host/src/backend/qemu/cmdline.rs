//! The qemu-system-x86_64 command line for a guest, as a pure function of its inputs.

use std::path::PathBuf;

use super::accel::Accel;

/// The machine type guests get (and the KVM probe, so that it tests what they run on).
pub const MACHINE: &str = "pc";

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub memory_mib: u64,
    pub cpus: u32,
    pub accel: Accel,
    pub disk: PathBuf,
    pub seed: Option<PathBuf>,
    pub ssh_port: u16,
    pub qmp_socket: PathBuf,
    pub console_socket: PathBuf,
    pub console_log: PathBuf,
    pub pidfile: PathBuf,
}

/// Arguments after the program name. Mirrors what vmd gives a guest: firmware (SeaBIOS)
/// boot of a virtio disk, the seed as a CD-ROM, one virtio NIC, the serial port as the
/// console. The NIC uses user-mode networking with the guest's sshd forwarded to a port
/// on 127.0.0.1 only.
pub fn args(l: &Launch) -> Vec<String> {
    let p = |p: &PathBuf| p.display().to_string();
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("{},process=almavmm-{}", l.name, l.name),
        "-machine".into(),
        format!("{MACHINE},accel={}", l.accel.qemu_name()),
        "-cpu".into(),
        l.accel.cpu().into(),
        "-smp".into(),
        l.cpus.to_string(),
        "-m".into(),
        format!("{}M", l.memory_mib),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-vga".into(),
        "none".into(),
        // The RTC follows the host's clock in UTC, also while the guest is paused: after a
        // pause the guest can find out how far behind it is.
        "-rtc".into(),
        "base=utc,clock=host".into(),
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2,cache=writeback,discard=unmap", p(&l.disk)),
    ];
    if let Some(seed) = &l.seed {
        a.extend(["-drive".into(), format!("file={},media=cdrom,readonly=on,if=ide", p(seed))]);
    }
    a.extend([
        "-netdev".into(),
        format!("user,id=net0,hostfwd=tcp:127.0.0.1:{}-:22", l.ssh_port),
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-chardev".into(),
        format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            p(&l.console_socket),
            p(&l.console_log)
        ),
        "-serial".into(),
        "chardev:serial0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p(&l.qmp_socket)),
        "-pidfile".into(),
        p(&l.pidfile),
        "-daemonize".into(),
    ]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(accel: Accel) -> Launch {
        Launch {
            name: "alma".into(),
            memory_mib: 2048,
            cpus: 1,
            accel,
            disk: "/s/vms/alma/disk.qcow2".into(),
            seed: Some("/s/vms/alma/seed.iso".into()),
            ssh_port: 40022,
            qmp_socket: "/s/vms/alma/qmp.sock".into(),
            console_socket: "/s/vms/alma/console.sock".into(),
            console_log: "/s/vms/alma/console.log".into(),
            pidfile: "/s/vms/alma/qemu.pid".into(),
        }
    }

    fn value_of<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn tcg_guest_gets_a_cpu_alma_9_can_run() {
        let a = args(&launch(Accel::Tcg { why: "test".into() }));
        assert_eq!(value_of(&a, "-machine"), ["pc,accel=tcg"]);
        assert_eq!(value_of(&a, "-cpu"), ["max"]);
        let k = args(&launch(Accel::Kvm));
        assert_eq!(value_of(&k, "-cpu"), ["host"]);
    }

    #[test]
    fn ssh_is_forwarded_from_loopback_only() {
        let a = args(&launch(Accel::Kvm));
        assert_eq!(value_of(&a, "-netdev"), ["user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"]);
    }

    #[test]
    fn disk_is_virtio_and_seed_a_cdrom() {
        let a = args(&launch(Accel::Kvm));
        let drives = value_of(&a, "-drive");
        assert!(drives[0].starts_with("file=/s/vms/alma/disk.qcow2,if=virtio,format=qcow2"));
        assert_eq!(drives[1], "file=/s/vms/alma/seed.iso,media=cdrom,readonly=on,if=ide");
        let mut l = launch(Accel::Kvm);
        l.seed = None;
        assert_eq!(value_of(&args(&l), "-drive").len(), 1);
    }

    #[test]
    fn console_is_logged_and_attachable_and_qemu_daemonizes() {
        let a = args(&launch(Accel::Kvm));
        assert_eq!(
            value_of(&a, "-chardev"),
            [
                "socket,id=serial0,path=/s/vms/alma/console.sock,server=on,wait=off,logfile=/s/vms/alma/console.log,logappend=on"
            ]
        );
        assert_eq!(value_of(&a, "-serial"), ["chardev:serial0"]);
        assert_eq!(value_of(&a, "-qmp"), ["unix:/s/vms/alma/qmp.sock,server=on,wait=off"]);
        assert_eq!(a.last().unwrap(), "-daemonize");
    }
}
