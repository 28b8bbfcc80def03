//! Address prefixes and the named entities of the policy language.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of a [`Prefix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Bits in an address of this family.
    pub const fn width(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
}

/// A CIDR prefix without host bits. IPv4 addresses sit in the low 32 bits of `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub family: Family,
    pub addr: u128,
    pub len: u8,
}

/// Keeps the top `len` bits of a `width`-bit address.
pub const fn mask(addr: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let shift = width - len;
    // Shifting in two steps avoids the undefined 128-bit shift when `shift` is 128.
    (addr >> shift) << shift
}

impl Prefix {
    pub const fn v4(addr: Ipv4Addr, len: u8) -> Self {
        Self {
            family: Family::V4,
            addr: addr.to_bits() as u128,
            len,
        }
    }

    pub const fn v6(addr: Ipv6Addr, len: u8) -> Self {
        Self {
            family: Family::V6,
            addr: addr.to_bits(),
            len,
        }
    }

    /// Whether `other` lies inside this prefix (or equals it).
    pub fn contains(&self, other: &Self) -> bool {
        self.family == other.family
            && self.len <= other.len
            && mask(other.addr, self.len, self.family.width()) == self.addr
    }

    pub fn overlaps(&self, other: &Self) -> bool {
        self.contains(other) || other.contains(self)
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        let (family, bits) = ip_bits(ip);
        family == self.family && mask(bits, self.len, family.width()) == self.addr
    }

    pub fn ip(&self) -> IpAddr {
        match self.family {
            // Truncation is intended: IPv4 prefixes only use the low 32 bits.
            Family::V4 => IpAddr::V4(Ipv4Addr::from_bits(self.addr as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from_bits(self.addr)),
        }
    }

    /// Parses `addr/len` or a bare address (a host prefix), rejecting host bits and IPv4-mapped
    /// IPv6 prefixes with a message that says what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a valid IP address or CIDR prefix"))?;
        let (family, bits) = ip_bits(ip);
        let len = match len_text {
            None => family.width(),
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= family.width())
                .ok_or_else(|| {
                    format!(
                        "`{text}` has an invalid prefix length (0 to {} for this family)",
                        family.width()
                    )
                })?,
        };
        let prefix = Self {
            family,
            addr: mask(bits, len, family.width()),
            len,
        };
        if prefix.addr != bits {
            return Err(format!("{text} has host bits set; did you mean {prefix}?"));
        }
        if let IpAddr::V6(v6) = ip
            && len >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Err(format!(
                "{text} is an IPv4-mapped IPv6 prefix, which the kernel never sees; write the IPv4 form {v4}/{}",
                len - 96
            ));
        }
        Ok(prefix)
    }
}

/// Splits an address into its family and its bits (IPv4 in the low 32 bits).
pub fn ip_bits(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(v4) => (Family::V4, u128::from(v4.to_bits())),
        IpAddr::V6(v6) => (Family::V6, v6.to_bits()),
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip(), self.len)
    }
}

/// Named address sets: destinations in `to`, sources in `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    Any,
    Localhost,
    LinkLocal,
    Multicast,
    Private,
    CloudMetadata,
}

const ANY: &[Prefix] = &[
    Prefix::v4(Ipv4Addr::UNSPECIFIED, 0),
    Prefix::v6(Ipv6Addr::UNSPECIFIED, 0),
];
const LOCALHOST: &[Prefix] = &[
    Prefix::v4(Ipv4Addr::new(127, 0, 0, 0), 8),
    Prefix::v6(Ipv6Addr::LOCALHOST, 128),
];
const LINK_LOCAL: &[Prefix] = &[
    Prefix::v4(Ipv4Addr::new(169, 254, 0, 0), 16),
    Prefix::v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
];
const MULTICAST: &[Prefix] = &[
    Prefix::v4(Ipv4Addr::new(224, 0, 0, 0), 4),
    Prefix::v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];
const PRIVATE: &[Prefix] = &[
    Prefix::v4(Ipv4Addr::new(10, 0, 0, 0), 8),
    Prefix::v4(Ipv4Addr::new(172, 16, 0, 0), 12),
    Prefix::v4(Ipv4Addr::new(192, 168, 0, 0), 16),
    Prefix::v4(Ipv4Addr::new(100, 64, 0, 0), 10),
    Prefix::v6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
];
const CLOUD_METADATA: &[Prefix] = &[
    Prefix::v4(Ipv4Addr::new(169, 254, 169, 254), 32),
    Prefix::v4(Ipv4Addr::new(100, 100, 100, 200), 32),
    Prefix::v6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), 128),
];

impl Entity {
    pub const fn prefixes(self) -> &'static [Prefix] {
        match self {
            Self::Any => ANY,
            Self::Localhost => LOCALHOST,
            Self::LinkLocal => LINK_LOCAL,
            Self::Multicast => MULTICAST,
            Self::Private => PRIVATE,
            Self::CloudMetadata => CLOUD_METADATA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bits_suggest_the_network() {
        let err = Prefix::parse("203.0.113.1/24").expect_err("invalid test input");
        assert_eq!(
            err,
            "203.0.113.1/24 has host bits set; did you mean 203.0.113.0/24?"
        );
    }

    #[test]
    fn mapped_prefixes_are_rejected_with_the_ipv4_form() {
        let err = Prefix::parse("::ffff:10.0.0.0/104").expect_err("invalid test input");
        assert!(err.contains("write the IPv4 form 10.0.0.0/8"), "{err}");
    }

    #[test]
    fn containment_and_masks() {
        let net = Prefix::parse("10.0.0.0/8").expect("valid test input");
        let sub = Prefix::parse("10.1.0.0/16").expect("valid test input");
        assert!(net.contains(&sub) && !sub.contains(&net));
        assert!(
            Prefix::parse("::/0")
                .expect("valid test input")
                .contains_ip("::1".parse().expect("valid test input"))
        );
        assert!(
            !Prefix::parse("::/0")
                .expect("valid test input")
                .contains_ip("10.0.0.1".parse().expect("valid test input"))
        );
        assert_eq!(Prefix::parse("10.0.0.1").expect("valid test input").len, 32);
        assert!(Prefix::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn entities_have_no_host_bits() {
        for p in Entity::CloudMetadata
            .prefixes()
            .iter()
            .chain(Entity::Private.prefixes())
        {
            assert_eq!(Prefix::parse(&p.to_string()).expect("valid test input"), *p);
        }
    }
}
