//! Just enough ELF reading to tell whether a file can run as the agent in an x86_64 Linux
//! guest: 64-bit little-endian, x86-64, and static (no program interpreter), because the
//! guest's libc is whatever the distribution ships. Layout per the System V gABI
//! (elf(5)): e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38; PT_INTERP = 3.

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfProblem {
    #[error("it is not an ELF binary")]
    NotElf,
    #[error("it is not a 64-bit little-endian x86-64 binary")]
    WrongArch,
    #[error("it is dynamically linked (needs {0}); the guest needs a static build")]
    Dynamic(String),
    #[error("its ELF headers are truncated")]
    Truncated,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Check a candidate agent binary.
pub fn check_static_x86_64(b: &[u8]) -> Result<(), ElfProblem> {
    if !b.starts_with(b"\x7fELF") {
        return Err(ElfProblem::NotElf);
    }
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little endian), e_machine = 62 (EM_X86_64).
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) || u16_at(b, 0x12) != Some(62) {
        return Err(ElfProblem::WrongArch);
    }
    let phoff = u64_at(b, 0x20).ok_or(ElfProblem::Truncated)? as usize;
    let phentsize = u16_at(b, 0x36).ok_or(ElfProblem::Truncated)? as usize;
    let phnum = u16_at(b, 0x38).ok_or(ElfProblem::Truncated)? as usize;
    for i in 0..phnum {
        let ph = phoff.checked_add(i * phentsize).ok_or(ElfProblem::Truncated)?;
        let p_type = u32_at(b, ph).ok_or(ElfProblem::Truncated)?;
        if p_type == 3 {
            let off = u64_at(b, ph + 8).ok_or(ElfProblem::Truncated)? as usize;
            let size = u64_at(b, ph + 32).ok_or(ElfProblem::Truncated)? as usize;
            let interp = b.get(off..off.saturating_add(size)).ok_or(ElfProblem::Truncated)?;
            let interp = String::from_utf8_lossy(interp).trim_end_matches('\0').to_string();
            return Err(ElfProblem::Dynamic(interp));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_recognised_for_what_it_is() {
        // cargo's test binaries are dynamic glibc executables on Linux x86_64.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if cfg!(all(target_os = "linux", target_arch = "x86_64", not(target_feature = "crt-static"))) {
            assert!(matches!(check_static_x86_64(&me), Err(ElfProblem::Dynamic(i)) if i.contains("ld-linux")));
        }
    }

    /// A static-pie binary (what musl and glibc crt-static builds are) has PT_DYNAMIC for
    /// its own relocations but no PT_INTERP: static.
    #[test]
    fn static_pie_is_static_and_an_interpreter_is_not() {
        let with = |types: &[u32]| {
            let mut e = vec![0u8; 64];
            e[..6].copy_from_slice(b"\x7fELF\x02\x01");
            e[0x12] = 62;
            e[0x20] = 64;
            e[0x36] = 56;
            e[0x38] = types.len() as u8;
            for t in types {
                let mut ph = vec![0u8; 56];
                ph[..4].copy_from_slice(&t.to_le_bytes());
                e.extend(ph);
            }
            e
        };
        assert_eq!(check_static_x86_64(&with(&[6, 1, 1, 2])), Ok(()));
        assert!(matches!(check_static_x86_64(&with(&[6, 3, 1])), Err(ElfProblem::Truncated | ElfProblem::Dynamic(_))));
    }

    #[test]
    fn minimal_static_header_passes_and_garbage_fails() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[0x12] = 62;
        h[0x20] = 64; // e_phoff: right after the header, with no program headers
        h[0x36] = 56;
        assert_eq!(check_static_x86_64(&h), Ok(()));
        let mut arm = h.clone();
        arm[0x12] = 183;
        assert_eq!(check_static_x86_64(&arm), Err(ElfProblem::WrongArch));
        assert_eq!(check_static_x86_64(b"#!/bin/sh\n"), Err(ElfProblem::NotElf));
        let mut one_ph = h.clone();
        one_ph[0x38] = 1;
        assert_eq!(check_static_x86_64(&one_ph), Err(ElfProblem::Truncated));
    }
}
