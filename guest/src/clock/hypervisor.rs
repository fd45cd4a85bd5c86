//! What the hypervisor says about itself through CPUID.
//!
//! Hypervisors answer in the range 0x40000000..=0x4000FF00, one block every 0x100 leaves
//! (Linux arch/x86/include/asm/processor.h `hypervisor_cpuid_base`, and the vmm_clock
//! module scan the same way). Each block's first leaf holds the highest leaf of the block in
//! EAX and a 12-byte signature in EBX, ECX, EDX; for KVM (and vmm, which implements the KVM
//! clock ABI) the next leaf's EAX holds the feature bits (Linux
//! arch/x86/include/uapi/asm/kvm_para.h: KVM_FEATURE_CLOCKSOURCE = bit 0,
//! KVM_FEATURE_CLOCKSOURCE2 = bit 3, KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = bit 24).

/// `KVMKVMKVM\0\0\0`.
pub const KVM_SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";
/// OpenBSD vmm(4) (sys/arch/amd64/amd64/vmm_machdep.c).
pub const VMM_SIGNATURE: [u8; 12] = *b"OpenBSDVMM58";
/// QEMU's TCG accelerator (target/i386/cpu.c, the `expose-tcg` property).
pub const TCG_SIGNATURE: [u8; 12] = *b"TCGTCGTCGTCG";

pub const FEATURE_CLOCKSOURCE: u32 = 1 << 0;
pub const FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
pub const FEATURE_CLOCKSOURCE_STABLE: u32 = 1 << 24;

/// One hypervisor block found in the CPUID range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervisorLeaf {
    pub base: u32,
    pub signature: [u8; 12],
    /// EAX of `base + 1` when the block has that leaf, else 0.
    pub features: u32,
}

impl HypervisorLeaf {
    /// The signature for people: trailing NULs dropped, others shown as `\0`.
    pub fn signature_text(&self) -> String {
        let end = self.signature.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        self.signature[..end]
            .iter()
            .map(|&b| if b == 0 { "\\0".to_string() } else { (b as char).to_string() })
            .collect()
    }

    /// Offers the KVM paravirtual clock MSRs.
    pub fn offers_kvm_clock(&self) -> bool {
        self.signature == KVM_SIGNATURE && self.features & (FEATURE_CLOCKSOURCE | FEATURE_CLOCKSOURCE2) != 0
    }
}

/// Everything read from CPUID that the clock decision needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuidScan {
    /// CPUID.1:ECX bit 31, set by hypervisors for their guests.
    pub hypervisor_bit: bool,
    pub leaves: Vec<HypervisorLeaf>,
}

impl CpuidScan {
    pub fn find(&self, signature: &[u8; 12]) -> Option<&HypervisorLeaf> {
        self.leaves.iter().find(|l| &l.signature == signature)
    }

    pub fn kvm_clock_leaf(&self) -> Option<&HypervisorLeaf> {
        self.leaves.iter().find(|l| l.offers_kvm_clock())
    }

    /// "TCGTCGTCGTCG at 0x40000000, KVMKVMKVM at 0x40000100 (features 0x0100008b)".
    pub fn describe(&self) -> String {
        if !self.hypervisor_bit {
            return "no hypervisor (CPUID hypervisor bit clear)".into();
        }
        if self.leaves.is_empty() {
            return "hypervisor bit set but no hypervisor signature in CPUID 0x40000000-0x4000ff00".into();
        }
        let parts: Vec<String> = self
            .leaves
            .iter()
            .map(|l| {
                let mut s = format!("{} at {:#010x}", l.signature_text(), l.base);
                if l.signature == KVM_SIGNATURE || l.signature == VMM_SIGNATURE {
                    s.push_str(&format!(" (features {:#010x})", l.features));
                }
                s
            })
            .collect();
        format!("hypervisor signature {}", parts.join(", "))
    }
}

/// Read the hypervisor blocks of this CPU.
#[cfg(target_arch = "x86_64")]
pub fn scan() -> CpuidScan {
    let hypervisor_bit = raw_cpuid::CpuId::new().get_feature_info().is_some_and(|f| f.has_hypervisor());
    if !hypervisor_bit {
        return CpuidScan::default();
    }
    let mut leaves = Vec::new();
    for base in (0x4000_0000u32..=0x4000_ff00).step_by(0x100) {
        let r = raw_cpuid::cpuid!(base);
        let mut signature = [0u8; 12];
        signature[..4].copy_from_slice(&r.ebx.to_le_bytes());
        signature[4..8].copy_from_slice(&r.ecx.to_le_bytes());
        signature[8..].copy_from_slice(&r.edx.to_le_bytes());
        if !plausible_signature(&signature) {
            continue;
        }
        // EAX is the block's highest leaf; KVM leaves it 0 on old hosts, meaning base + 1.
        let max = if r.eax == 0 { base + 1 } else { r.eax };
        let features = if max > base { raw_cpuid::cpuid!(base + 1).eax } else { 0 };
        leaves.push(HypervisorLeaf { base, signature, features });
    }
    CpuidScan { hypervisor_bit, leaves }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn scan() -> CpuidScan {
    CpuidScan::default()
}

/// A real signature is printable ASCII padded with NULs; empty blocks read as zeros, and
/// some CPUs answer out-of-range leaves with the highest basic leaf (garbage here).
fn plausible_signature(sig: &[u8; 12]) -> bool {
    let end = sig.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    end >= 4 && sig[..end].iter().all(|&b| b.is_ascii_graphic() || b == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_read_well() {
        let kvm = HypervisorLeaf { base: 0x4000_0100, signature: KVM_SIGNATURE, features: 0x0100_008b };
        assert_eq!(kvm.signature_text(), "KVMKVMKVM");
        assert!(kvm.offers_kvm_clock());
        let bare_kvm = HypervisorLeaf { features: 0, ..kvm.clone() };
        assert!(!bare_kvm.offers_kvm_clock(), "KVM without the clock bits (kvmclock=off)");
        let scan = CpuidScan {
            hypervisor_bit: true,
            leaves: vec![HypervisorLeaf { base: 0x4000_0000, signature: VMM_SIGNATURE, features: 0 }, kvm],
        };
        assert_eq!(
            scan.describe(),
            "hypervisor signature OpenBSDVMM58 at 0x40000000 (features 0x00000000), KVMKVMKVM at 0x40000100 (features 0x0100008b)"
        );
    }

    #[test]
    fn garbage_is_not_a_signature() {
        assert!(plausible_signature(&TCG_SIGNATURE));
        assert!(plausible_signature(&KVM_SIGNATURE));
        assert!(!plausible_signature(&[0; 12]));
        assert!(!plausible_signature(&[0x01, 0xff, 0x20, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]));
    }

    // This runs on whatever machine runs the tests: the scan must not crash, and what it
    // reports must be self-consistent.
    #[test]
    fn scanning_this_cpu_is_consistent() {
        let s = scan();
        if !s.hypervisor_bit {
            assert!(s.leaves.is_empty());
        }
        for l in &s.leaves {
            assert!((0x4000_0000..=0x4000_ff00).contains(&l.base) && l.base % 0x100 == 0);
        }
    }
}
