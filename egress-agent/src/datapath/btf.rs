//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where a socket's
//! owner uid comes from: `task_struct.cred` and `cred.fsuid`. The kernel program reads the
//! current task's fsuid through these offsets in the socket hooks, so that it judges a
//! socket by the same uid the packet hook sees (`bpf_get_socket_uid`), which the kernel
//! set from the creator's fsuid, not its real uid.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html>. aya parses BTF too, but keeps member
//! offsets private.

use std::{fs, io, path::Path};

/// Offsets the socket hooks need, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredOffsets {
    /// Of the `cred` pointer in `struct task_struct`.
    pub task_cred: u32,
    /// Of `fsuid` (a `kuid_t` whose `val` comes first) in `struct cred`.
    pub cred_fsuid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no member {member} in struct {structure}")]
    Missing {
        structure: &'static str,
        member: &'static str,
    },
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

pub fn cred_offsets_from_sys_fs() -> Result<CredOffsets, BtfError> {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    let data = fs::read(path).map_err(|source| BtfError::Read {
        path: path.display().to_string(),
        source,
    })?;
    cred_offsets(&data)
}

pub fn cred_offsets(data: &[u8]) -> Result<CredOffsets, BtfError> {
    let btf = Btf::parse(data)?;
    Ok(CredOffsets {
        task_cred: btf.member_offset("task_struct", "cred")?,
        cred_fsuid: btf.member_offset("cred", "fsuid")?,
    })
}

struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed("too short"))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let field = |at| {
            u32_at(data, at)
                .map(|v| v as usize)
                .ok_or(BtfError::Malformed("short header"))
        };
        let header_len = field(4)?;
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        let section = |off: usize, len: usize| {
            data.get(header_len + off..header_len + off + len)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        Ok(Self {
            types: section(type_off, type_len)?,
            strings: section(str_off, str_len)?,
        })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let start = offset as usize;
        let rest = self.strings.get(start..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Byte offset of `member` in the struct named `structure`.
    fn member_offset(
        &self,
        structure: &'static str,
        member: &'static str,
    ) -> Result<u32, BtfError> {
        let missing = BtfError::Missing { structure, member };
        let mut at = 0;
        while at + 12 <= self.types.len() {
            let name_off = u32_at(self.types, at).ok_or(BtfError::Malformed("type"))?;
            let info = u32_at(self.types, at + 4).ok_or(BtfError::Malformed("type"))?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let members = at + 12;
            if kind == KIND_STRUCT && self.name(name_off) == structure.as_bytes() {
                for i in 0..vlen {
                    let m = members + i * 12;
                    let m_name = u32_at(self.types, m).ok_or(BtfError::Malformed("member"))?;
                    let m_offset =
                        u32_at(self.types, m + 8).ok_or(BtfError::Malformed("member"))?;
                    if self.name(m_name) == member.as_bytes() {
                        let bits = if kind_flag {
                            m_offset & 0x00ff_ffff
                        } else {
                            m_offset
                        };
                        return Ok(bits / 8);
                    }
                }
                return Err(missing);
            }
            at = members + trailing_len(kind, vlen)?;
        }
        Err(missing)
    }
}

/// Bytes of kind-specific data after a type's 12-byte header.
fn trailing_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
        2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        _ => return Err(BtfError::Malformed("unknown type kind")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct cred { int uid; int fsuid; }` and `struct task_struct { long
    /// pad; struct cred *cred; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0cred\0uid\0fsuid\0task_struct\0pad\0long\0".to_vec();
        let name = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .expect("string")
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        };
        push(&[name("int"), 1 << 24, 4, 32]); // [1] INT int
        push(&[name("cred"), (4 << 24) | 2, 8]); // [2] STRUCT cred
        push(&[name("uid"), 1, 0]);
        push(&[name("fsuid"), 1, 32]);
        push(&[0, 2 << 24, 2]); // [3] PTR -> cred
        push(&[name("long"), 1 << 24, 8, 64]); // [4] INT long
        push(&[name("task_struct"), (4 << 24) | 2, 16]); // [5] STRUCT task_struct
        push(&[name("pad"), 4, 0]);
        push(&[name("cred"), 3, 64]);
        let mut data = Vec::new();
        for word in [
            u32::from(MAGIC) | (1 << 16),
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_member_offsets() {
        assert_eq!(
            cred_offsets(&blob()).expect("offsets"),
            CredOffsets {
                task_cred: 8,
                cred_fsuid: 4
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(cred_offsets(b"nonsense").is_err());
        assert!(cred_offsets(&[]).is_err());
    }

    #[test]
    fn reads_this_kernel() {
        // Every kernel this agent supports has BTF; the offsets are small and distinct.
        let offsets = cred_offsets_from_sys_fs().expect("vmlinux BTF");
        assert!(
            offsets.task_cred > 0 && offsets.task_cred < 16_384,
            "{offsets:?}"
        );
        assert!(
            offsets.cred_fsuid > 0 && offsets.cred_fsuid < 256,
            "{offsets:?}"
        );
    }
}
