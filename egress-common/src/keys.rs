//! Keys of the classification maps.

/// Key of `CGROUP_CLASSES`. Value: the cgroup class (with parity bit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    pub cgroup_id: u64,
    /// Parity of the generation the entry belongs to.
    pub parity: u32,
    pub _pad: u32,
}

/// Key of `SCOPES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    /// Cgroup class (with parity bit); the class of cgroups no selector names is the parity alone.
    pub cgroup_class: u32,
    /// Socket owner uid, or [`crate::ANY_UID`].
    pub uid: u32,
}

/// Data of an `ADDR4` LPM key: scope id big-endian, then the IPv4 address.
/// The prefix length counts the 32 scope bits too.
pub type Addr4Data = [u8; 8];
/// Data of an `ADDR6` LPM key: scope id big-endian, then the IPv6 address.
pub type Addr6Data = [u8; 20];
/// Data of a `PORTS` LPM key: address class big-endian, protocol, port big-endian.
/// The prefix length counts the 32 class bits and 8 protocol bits too.
pub type PortData = [u8; 7];

/// Prefix bits of the id that leads every LPM key.
pub const ID_BITS: u32 = 32;
/// Prefix bits of an address class and a protocol in a `PORTS` key.
pub const CLASS_AND_PROTOCOL_BITS: u32 = ID_BITS + 8;
/// Prefix length of a `PORTS` key that names one port exactly.
pub const PORT_KEY_FULL_BITS: u32 = CLASS_AND_PROTOCOL_BITS + 16;

#[inline(always)]
pub fn addr4_data(scope: u32, addr: [u8; 4]) -> Addr4Data {
    let s = scope.to_be_bytes();
    [s[0], s[1], s[2], s[3], addr[0], addr[1], addr[2], addr[3]]
}

#[inline(always)]
pub fn addr6_data(scope: u32, addr: [u8; 16]) -> Addr6Data {
    let mut data = [0u8; 20];
    let s = scope.to_be_bytes();
    data[0] = s[0];
    data[1] = s[1];
    data[2] = s[2];
    data[3] = s[3];
    let mut i = 0;
    while i < 16 {
        data[4 + i] = addr[i];
        i += 1;
    }
    data
}

#[inline(always)]
pub fn port_data(class: u32, protocol: u8, port: u16) -> PortData {
    let c = class.to_be_bytes();
    let p = port.to_be_bytes();
    [c[0], c[1], c[2], c[3], protocol, p[0], p[1]]
}
