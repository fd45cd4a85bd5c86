//! Memory and disk sizes as users write them (`2G`, `512M`, `20G`), the way vmctl(8) and
//! qemu take them: binary units, K/M/G/T suffixes, an optional trailing `B`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteSize(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a size: write a whole number with a unit, such as 512M, 2G or 20G")]
pub struct SizeError {
    pub input: String,
}

impl ByteSize {
    pub const fn bytes(n: u64) -> ByteSize {
        ByteSize(n)
    }
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }
    pub fn as_u64(self) -> u64 {
        self.0
    }
    pub fn as_mib(self) -> u64 {
        self.0 >> 20
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, SizeError> {
        let err = || SizeError { input: s.to_string() };
        let t = s.trim();
        let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| err())?;
        let shift = match unit.to_ascii_uppercase().as_str() {
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            // A bare number would be bytes to qemu but megabytes to vmctl: refuse it.
            _ => return Err(err()),
        };
        n.checked_mul(1u64 << shift).map(ByteSize).ok_or_else(err)
    }
}

impl TryFrom<String> for ByteSize {
    type Error = SizeError;
    fn try_from(s: String) -> Result<Self, SizeError> {
        s.parse()
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        b.to_string()
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides exactly, so the value round-trips.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 != 0 && self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}K", self.0.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        assert_eq!("2G".parse::<ByteSize>().unwrap(), ByteSize::gib(2));
        assert_eq!("512M".parse::<ByteSize>().unwrap(), ByteSize::mib(512));
        assert_eq!("20g".parse::<ByteSize>().unwrap(), ByteSize::gib(20));
        assert_eq!("1536MB".parse::<ByteSize>().unwrap(), ByteSize::mib(1536));
        assert_eq!(" 1T ".parse::<ByteSize>().unwrap().as_u64(), 1 << 40);
    }

    #[test]
    fn refuses_ambiguous_or_broken_sizes() {
        for bad in ["", "2", "G", "2.5G", "-1G", "2X", "99999999999T"] {
            let e = bad.parse::<ByteSize>().unwrap_err();
            assert!(e.to_string().contains("such as 512M, 2G"), "{bad}: {e}");
        }
    }

    #[test]
    fn displays_round_trip() {
        for s in ["2G", "512M", "1536M", "20G", "1T", "4K"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
    }
}
