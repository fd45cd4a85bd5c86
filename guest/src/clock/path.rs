//! Which clock this guest should follow the host with, decided from what the hypervisor
//! offers: kvm-clock when it is there (current OpenBSD vmm answers as KVM too), our
//! `vmm_clock` module on an OpenBSD vmm that does not, nothing otherwise.

use almavmm_shared::health::{ClockPath, ClockPathInfo, ClocksourceInfo};

use crate::clock::hypervisor::{CpuidScan, TCG_SIGNATURE, VMM_SIGNATURE};
use crate::sys::sysroot::SysRoot;

/// The phrase the record carries when no paravirtual clock is offered (the end-to-end test
/// looks for it).
pub const NO_PARAVIRT: &str = "no paravirtual clock offered";

/// What the decision looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub cpuid: CpuidScan,
    pub clocksources: ClocksourceInfo,
    /// `/sys/class/dmi/id/sys_vendor` (`QEMU` under QEMU), when readable.
    pub sys_vendor: Option<String>,
}

impl Evidence {
    pub fn gather(root: &SysRoot) -> std::io::Result<Evidence> {
        Ok(Evidence {
            cpuid: crate::clock::hypervisor::scan(),
            clocksources: crate::clock::source::read(root)?,
            sys_vendor: root
                .read_optional("/sys/class/dmi/id/sys_vendor")?
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        })
    }
}

pub fn decide(ev: &Evidence) -> ClockPathInfo {
    let seen_cpu = ev.cpuid.describe();
    let seen_cs = crate::clock::source::describe(&ev.clocksources);
    let kvm_listed = ev.clocksources.available.iter().any(|c| c == "kvm-clock");
    let vmm = ev.cpuid.find(&VMM_SIGNATURE);
    if let Some(kvm) = ev.cpuid.kvm_clock_leaf() {
        let also = if vmm.is_some() { "OpenBSD vmm also answers as KVM, so " } else { "" };
        return ClockPathInfo {
            path: ClockPath::KvmClock,
            reason: format!(
                "kvm-clock offered ({also}the kernel's own kvm-clock serves this guest; no module needed): \
                 KVM signature at {:#010x} with clocksource feature bits; {seen_cpu}; {seen_cs}",
                kvm.base
            ),
        };
    }
    if kvm_listed {
        return ClockPathInfo {
            path: ClockPath::KvmClock,
            reason: format!("kvm-clock offered (listed by the kernel; no module needed): {seen_cs}; {seen_cpu}"),
        };
    }
    if vmm.is_some() {
        return ClockPathInfo {
            path: ClockPath::VmmClock,
            reason: format!(
                "OpenBSD vmm without a KVM clock: the vmm_clock module provides the paravirtual clock; {seen_cpu}; {seen_cs}"
            ),
        };
    }
    let tcg = ev.cpuid.find(&TCG_SIGNATURE).is_some();
    let qemu = ev.sys_vendor.as_deref() == Some("QEMU");
    let what = if tcg || (qemu && ev.cpuid.leaves.is_empty()) {
        " (QEMU without KVM)"
    } else if !ev.cpuid.hypervisor_bit {
        " (not running under a hypervisor)"
    } else {
        ""
    };
    ClockPathInfo {
        path: ClockPath::None,
        reason: format!("{NO_PARAVIRT}{what}: {seen_cpu}; {seen_cs}; the vmm_clock module is not needed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::hypervisor::{HypervisorLeaf, KVM_SIGNATURE};

    fn leaf(base: u32, signature: [u8; 12], features: u32) -> HypervisorLeaf {
        HypervisorLeaf { base, signature, features }
    }

    fn sysfs(tree: &str) -> ClocksourceInfo {
        let root = SysRoot::new(format!("{}/tests/fixtures/sysfs/{tree}", env!("CARGO_MANIFEST_DIR")));
        crate::clock::source::read(&root).unwrap()
    }

    #[test]
    fn qemu_tcg_gets_no_module_and_says_what_it_saw() {
        let ev = Evidence {
            cpuid: CpuidScan { hypervisor_bit: true, leaves: vec![leaf(0x4000_0000, TCG_SIGNATURE, 0)] },
            clocksources: sysfs("tsc-only"),
            sys_vendor: Some("QEMU".into()),
        };
        let d = decide(&ev);
        assert_eq!(d.path, ClockPath::None);
        assert!(
            d.reason.starts_with(
                "no paravirtual clock offered (QEMU without KVM): hypervisor signature TCGTCGTCGTCG at 0x40000000; clocksource tsc"
            ),
            "{}",
            d.reason
        );
    }

    #[test]
    fn kvm_clock_is_used_when_offered_even_on_vmm() {
        let ev = Evidence {
            cpuid: CpuidScan {
                hypervisor_bit: true,
                leaves: vec![
                    leaf(0x4000_0000, VMM_SIGNATURE, 0x0100_0008),
                    leaf(0x4000_0100, KVM_SIGNATURE, 0x0100_0008),
                ],
            },
            clocksources: sysfs("kvm-clock"),
            sys_vendor: None,
        };
        let d = decide(&ev);
        assert_eq!(d.path, ClockPath::KvmClock);
        assert!(d.reason.contains("OpenBSD vmm also answers as KVM"), "{}", d.reason);
        assert!(d.reason.contains("KVM signature at 0x40000100"), "{}", d.reason);
    }

    #[test]
    fn kvm_clock_listed_by_the_kernel_counts_too() {
        let ev = Evidence { cpuid: CpuidScan::default(), clocksources: sysfs("kvm-clock"), sys_vendor: None };
        assert_eq!(decide(&ev).path, ClockPath::KvmClock);
    }

    #[test]
    fn old_vmm_without_kvm_needs_the_module() {
        let ev = Evidence {
            cpuid: CpuidScan { hypervisor_bit: true, leaves: vec![leaf(0x4000_0000, VMM_SIGNATURE, 0)] },
            clocksources: sysfs("tsc-only"),
            sys_vendor: Some("OpenBSD".into()),
        };
        let d = decide(&ev);
        assert_eq!(d.path, ClockPath::VmmClock);
        assert!(d.reason.contains("OpenBSDVMM58"), "{}", d.reason);
    }

    #[test]
    fn vmm_with_the_module_already_active_stays_on_the_module() {
        let ev = Evidence {
            cpuid: CpuidScan { hypervisor_bit: true, leaves: vec![leaf(0x4000_0000, VMM_SIGNATURE, 0)] },
            clocksources: sysfs("vmm-clock"),
            sys_vendor: None,
        };
        assert_eq!(decide(&ev).path, ClockPath::VmmClock);
    }

    #[test]
    fn kvm_without_clock_bits_is_not_a_paravirtual_clock() {
        let ev = Evidence {
            cpuid: CpuidScan { hypervisor_bit: true, leaves: vec![leaf(0x4000_0000, KVM_SIGNATURE, 0)] },
            clocksources: sysfs("tsc-only"),
            sys_vendor: None,
        };
        let d = decide(&ev);
        assert_eq!(d.path, ClockPath::None);
        assert!(d.reason.starts_with("no paravirtual clock offered: hypervisor signature KVMKVMKVM"), "{}", d.reason);
    }

    #[test]
    fn bare_metal_is_named() {
        let ev = Evidence { cpuid: CpuidScan::default(), clocksources: sysfs("tsc-only"), sys_vendor: None };
        let d = decide(&ev);
        assert!(d.reason.starts_with("no paravirtual clock offered (not running under a hypervisor)"), "{}", d.reason);
    }
}
