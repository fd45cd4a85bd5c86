//! Guest names, validated once at the edge with the rules vmd applies, so that every later
//! step (vm.conf, file names, tap descriptions, ssh aliases) can use them as they are.

use std::fmt;
use std::str::FromStr;

/// vmd refuses names of 64 characters or more (vmd's `VMM_MAX_NAME_LEN` is 64, NUL
/// included).
pub const MAX_NAME_LEN: usize = 63;

/// A guest name vmd accepts: letters, digits, `.`, `-` and `_`, not starting with one of
/// the three punctuation characters, at most 63 characters; and one vmctl reads as a name:
/// not digits only (usr.sbin/vmctl/main.c `parse_vmid` tries `strtonum(word, 0,
/// UINT32_MAX)` first and takes any number as a VM id, so `vmctl stop -f 3` stops vm id 3
/// whatever its name). Digits too many for a u32 would pass as a name there, but are
/// refused too: one rule, easy to state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a guest name cannot be empty")]
    Empty,
    #[error("guest name {0:?} is too long: vmd allows at most 63 characters")]
    TooLong(String),
    #[error("guest name {name:?} cannot start with {first:?}: vmd wants a letter or digit first")]
    BadStart { name: String, first: char },
    #[error("guest name {name:?} contains {bad:?}: use letters, digits, '.', '-' and '_' only")]
    BadChar { name: String, bad: char },
    #[error(
        "guest name {0:?} is made only of digits: vmctl reads such an argument as a VM id, not a name (`vmctl stop {0}` would stop vm id {0}); add a letter, e.g. \"vm{0}\""
    )]
    AllDigits(String),
}

impl VmName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VmName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let first = s.chars().next().ok_or(NameError::Empty)?;
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.to_string()));
        }
        if let Some(bad) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
            return Err(NameError::BadChar { name: s.to_string(), bad });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(NameError::BadStart { name: s.to_string(), first });
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NameError::AllDigits(s.to_string()));
        }
        Ok(VmName(s.to_string()))
    }
}

impl TryFrom<String> for VmName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        s.parse()
    }
}

impl From<VmName> for String {
    fn from(n: VmName) -> String {
        n.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_vmd_accepts() {
        for ok in ["alma", "vm1", "a.b-c_d", "9lives", "1.5", "0x10", "3-a", &"x".repeat(63)] {
            assert_eq!(ok.parse::<VmName>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_what_vmd_rejects_with_a_reason() {
        assert_eq!("".parse::<VmName>(), Err(NameError::Empty));
        assert!(matches!("x".repeat(64).parse::<VmName>(), Err(NameError::TooLong(_))));
        assert!(matches!("-vm".parse::<VmName>(), Err(NameError::BadStart { first: '-', .. })));
        assert!(matches!(".vm".parse::<VmName>(), Err(NameError::BadStart { first: '.', .. })));
        assert!(matches!("_vm".parse::<VmName>(), Err(NameError::BadStart { first: '_', .. })));
        assert!(matches!("my vm".parse::<VmName>(), Err(NameError::BadChar { bad: ' ', .. })));
        assert!(matches!("vm/1".parse::<VmName>(), Err(NameError::BadChar { bad: '/', .. })));
        assert!(matches!("vé".parse::<VmName>(), Err(NameError::BadChar { bad: 'é', .. })));
        // main.c parse_vmid: strtonum first, so these would be VM ids to vmctl.
        for ids in ["3", "0", "007", "4294967295", "99999999999"] {
            assert_eq!(ids.parse::<VmName>(), Err(NameError::AllDigits(ids.into())), "{ids}");
        }
        let msg = "3".parse::<VmName>().unwrap_err().to_string();
        assert!(msg.contains("only of digits") && msg.contains("vm id 3") && msg.contains("\"vm3\""), "{msg}");
        let msg = "my vm".parse::<VmName>().unwrap_err().to_string();
        assert_eq!(msg, "guest name \"my vm\" contains ' ': use letters, digits, '.', '-' and '_' only");
    }
}
