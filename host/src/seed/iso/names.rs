//! The three names every file has on the seed: the plain ISO 9660 level 1 identifier
//! (8.3, upper case, what a reader without extensions sees), the Joliet one (UCS-2) and the
//! Rock Ridge one (the real name, bytes as given); and the order records are sorted in.

use std::cmp::Ordering;

use super::IsoError;

/// Joliet stores names as at most 64 UCS-2 characters.
const JOLIET_MAX_NAME: usize = 64;
/// Rock Ridge's `NM` must fit in one directory record beside the other entries; longer
/// names would need a continuation area per file, which a seed never needs.
const RR_MAX_NAME: usize = 120;

/// Check that one path component can be held by ISO 9660 with Joliet and Rock Ridge. Rock
/// Ridge would hold almost anything; Joliet is the narrower of the two, and some readers
/// (Windows, older blkid) see only Joliet, so its rules apply.
pub fn check_name(name: &str) -> Result<(), IsoError> {
    let bad = |reason| Err(IsoError::BadName { name: name.to_string(), reason });
    if name.is_empty() || name == "." || name == ".." {
        return bad("empty, `.` and `..` are not file names");
    }
    if name.encode_utf16().count() > JOLIET_MAX_NAME {
        return bad("Joliet allows at most 64 characters in a name");
    }
    if name.len() > RR_MAX_NAME {
        return bad("the seed's Rock Ridge names are at most 120 bytes of UTF-8");
    }
    if name.chars().any(|c| c.is_control() || matches!(c, '*' | '/' | ':' | ';' | '?' | '\\')) {
        return bad("Joliet forbids control characters and * / : ; ? \\ in names");
    }
    if name.chars().any(|c| c as u32 > 0xFFFF) {
        return bad("Joliet (UCS-2) cannot hold characters outside the Basic Multilingual Plane");
    }
    Ok(())
}

/// A level 1 identifier: name of at most 8 d-characters, extension of at most 3 (files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level1 {
    pub name: String,
    pub ext: String,
}

impl Level1 {
    /// The identifier as recorded: `NAME.EXT;1` for a file, `NAME` for a directory.
    pub fn id(&self, is_dir: bool) -> Vec<u8> {
        if is_dir { self.name.clone().into_bytes() } else { format!("{}.{};1", self.name, self.ext).into_bytes() }
    }
}

fn d_chars(s: &str, max: usize) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).take(max).collect()
}

/// The level 1 identifiers for the names of one directory, in the same order, made unique
/// by replacing the end of a clashing name with a number (as mkisofs does).
pub fn level1_names(names: &[(&str, bool)]) -> Vec<Level1> {
    let mut out: Vec<Level1> = Vec::with_capacity(names.len());
    for &(name, is_dir) in names {
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 && !is_dir => (&name[..i], d_chars(&name[i + 1..], 3)),
            _ => (name, String::new()),
        };
        let base = d_chars(stem, 8);
        let mut candidate = Level1 { name: base.clone(), ext: ext.clone() };
        let mut n = 0u32;
        while out.contains(&candidate) {
            let digits = n.to_string();
            let keep = base.chars().take(8 - digits.len()).collect::<String>();
            candidate = Level1 { name: format!("{keep}{digits}"), ext: ext.clone() };
            n += 1;
        }
        out.push(candidate);
    }
    out
}

/// The Joliet identifier: the name in UCS-2 big-endian, without a version (as mkisofs
/// writes it; readers that see `;1` strip it anyway).
pub fn joliet_id(name: &str) -> Vec<u8> {
    name.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// ECMA-119 §9.3 order of level 1 identifiers: by name, then by extension, each compared
/// as if the shorter were padded with spaces.
pub fn level1_order(a: &Level1, b: &Level1) -> Ordering {
    padded_cmp(a.name.as_bytes(), b.name.as_bytes()).then_with(|| padded_cmp(a.ext.as_bytes(), b.ext.as_bytes()))
}

/// The same rule over Joliet's UCS-2 identifiers, leaving out the version (always 1).
pub fn joliet_order(a: &[u8], b: &[u8]) -> Ordering {
    let units = |v: &[u8]| {
        v.chunks(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .take_while(|&u| u != u16::from(b';'))
            .collect::<Vec<u16>>()
    };
    let (a, b) = (units(a), units(b));
    let n = a.len().max(b.len());
    let pad = |v: &[u16], i: usize| v.get(i).copied().unwrap_or(0x20);
    (0..n).map(|i| pad(&a, i).cmp(&pad(&b, i))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

fn padded_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().max(b.len());
    let pad = |v: &[u8], i: usize| v.get(i).copied().unwrap_or(b' ');
    (0..n).map(|i| pad(a, i).cmp(&pad(b, i))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_joliet_cannot_hold_are_refused_with_the_reason() {
        assert!(check_name("user-data").is_ok());
        assert!(check_name("vmm_clock-0.1.0.tar.gz").is_ok());
        for bad in ["", "..", "a:b", "a;1", "what?", "back\\slash", "tab\there", "emoji😀"] {
            assert!(matches!(check_name(bad), Err(IsoError::BadName { .. })), "{bad:?}");
        }
        let long = "x".repeat(65);
        let msg = check_name(&long).unwrap_err().to_string();
        assert!(msg.contains("at most 64 characters"), "{msg}");
        assert!(check_name(&"x".repeat(64)).is_ok());
        // 64 characters, but 128 bytes of UTF-8: too long for one Rock Ridge record.
        assert!(check_name(&"é".repeat(64)).is_err());
    }

    #[test]
    fn level1_names_are_8_3_upper_case_and_unique() {
        let got = level1_names(&[
            ("meta-data", false),
            ("vmm_clock-0.1.0.tar.gz", false),
            ("almavmm", true),
            ("almavmm-agent", false),
            ("almavmm-agent2", false),
            (".hidden", false),
        ]);
        let ids: Vec<String> = got
            .iter()
            .zip([false, false, true, false, false, false])
            .map(|(l, d)| String::from_utf8(l.id(d)).unwrap())
            .collect();
        assert_eq!(ids, ["META_DAT.;1", "VMM_CLOC.GZ;1", "ALMAVMM", "ALMAVMM_.;1", "ALMAVMM0.;1", "_HIDDEN.;1"]);
    }

    #[test]
    fn many_clashes_still_give_unique_names() {
        let names: Vec<String> = (0..30).map(|i| format!("same-prefix-{i}")).collect();
        let input: Vec<(&str, bool)> = names.iter().map(|n| (n.as_str(), false)).collect();
        let got = level1_names(&input);
        for (i, a) in got.iter().enumerate() {
            assert!(a.name.len() <= 8);
            assert!(!got[i + 1..].contains(a), "{a:?} twice");
        }
    }

    #[test]
    fn joliet_ids_are_big_endian_ucs2() {
        assert_eq!(joliet_id("a-b"), [0, b'a', 0, b'-', 0, b'b']);
        assert_eq!(joliet_id("é"), [0x00, 0xE9]);
    }

    #[test]
    fn order_pads_with_spaces_and_compares_extensions_second() {
        let l = |n: &str, e: &str| Level1 { name: n.into(), ext: e.into() };
        assert_eq!(level1_order(&l("A", "Z"), &l("A_B", "A")), Ordering::Less);
        assert_eq!(level1_order(&l("AB", "GZ"), &l("AB", "C")), Ordering::Greater);
        assert_eq!(joliet_order(&joliet_id("a"), &joliet_id("a-b")), Ordering::Less);
        assert_eq!(joliet_order(&joliet_id("b"), &joliet_id("a-b")), Ordering::Greater);
    }
}
