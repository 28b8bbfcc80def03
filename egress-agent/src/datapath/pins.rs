//! Where the datapath lives in bpffs, so that enforcement survives the agent: maps and
//! links are pinned under `<base>/<program version>/`. A restarted agent of the same version
//! adopts them with no gap; a different version attaches its own beside them, then removes
//! the old ones, so that there is never a moment without enforcement.
//!
//! ```text
//! /sys/fs/bpf/egress/
//!   3f2a9c0d41b7/            program version: a digest of the kernel object
//!     maps/EGRESS_CONFIG ...
//!     links/egress_skb ...
//! ```

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted by convention.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path} is not on a bpffs mount (mount one with `mount -t bpf bpf {path}`): {source}")]
    NotBpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting bpffs at {BPFFS_MOUNT}: {0}")]
    Mount(#[source] io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The pin directory of one program version.
#[derive(Clone, Debug)]
pub struct PinDir {
    base: PathBuf,
    version: String,
}

/// The version of the kernel object compiled into this agent: the first 12 hex digits of
/// its SHA-256. Pins of the same version can be adopted as they are.
pub fn object_version(object: &[u8]) -> String {
    Sha256::digest(object)
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl PinDir {
    /// Prepares `<base>/<version>/{maps,links}`, mounting bpffs at /sys/fs/bpf first when
    /// `base` lies below it and nothing is mounted there yet (as systemd would).
    pub fn create(base: &Path, version: &str) -> Result<Self, PinError> {
        ensure_bpffs(base)?;
        let dir = Self {
            base: base.to_owned(),
            version: version.to_owned(),
        };
        for sub in ["maps", "links"] {
            let path = dir.version_dir().join(sub);
            fs::create_dir_all(&path).map_err(|source| PinError::Io { path, source })?;
        }
        Ok(dir)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn version_dir(&self) -> PathBuf {
        self.base.join(&self.version)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.version_dir().join("maps").join(name)
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.version_dir().join("links").join(program)
    }

    /// Removes this version's pins, and the base directory unless another version's pins
    /// are in it.
    pub fn remove(&self) -> Result<(), PinError> {
        remove_version(&self.version_dir())?;
        match fs::remove_dir(&self.base) {
            Err(err)
                if !matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) =>
            {
                Err(PinError::Io {
                    path: self.base.clone(),
                    source: err,
                })
            }
            _ => Ok(()),
        }
    }

    /// The version directories under the base other than ours.
    pub fn other_versions(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.base) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|entry| entry.file_name().as_bytes() != self.version.as_bytes())
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .map(|entry| entry.path())
            .collect()
    }
}

/// Removes a version directory: its links first (removing the last reference to a link
/// detaches its program), then its maps (freed once no program uses them).
pub fn remove_version(dir: &Path) -> Result<(), PinError> {
    for sub in ["links", "maps"] {
        let path = dir.join(sub);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(PinError::Io { path, source }),
        };
        for entry in entries.flatten() {
            let pin = entry.path();
            fs::remove_file(&pin).map_err(|source| PinError::Io { path: pin, source })?;
        }
        remove_dir_if_present(&path)?;
    }
    remove_dir_if_present(dir)
}

/// Removes everything under `base` that any version of the agent pinned, and `base` itself.
pub fn remove_all(base: &Path) -> Result<usize, PinError> {
    let entries = match fs::read_dir(base) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(PinError::Io {
                path: base.to_owned(),
                source,
            });
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        remove_version(&entry.path())?;
        removed += 1;
    }
    remove_dir_if_present(base)?;
    Ok(removed)
}

fn remove_dir_if_present(path: &Path) -> Result<(), PinError> {
    match fs::remove_dir(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(PinError::Io {
            path: path.to_owned(),
            source: err,
        }),
        _ => Ok(()),
    }
}

fn ensure_bpffs(base: &Path) -> Result<(), PinError> {
    let existing = base
        .ancestors()
        .find(|path| path.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing)? {
        return Ok(());
    }
    let mount_point = Path::new(BPFFS_MOUNT);
    if base.starts_with(mount_point) && mount_point.is_dir() && !is_bpffs(mount_point)? {
        mount_bpffs(mount_point)?;
        if is_bpffs(existing)? {
            return Ok(());
        }
    }
    Err(PinError::NotBpffs {
        path: base.to_owned(),
        source: io::Error::other("the filesystem is not bpffs"),
    })
}

fn is_bpffs(path: &Path) -> Result<bool, PinError> {
    let c_path = c_string(path)?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(PinError::NotBpffs {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: statfs succeeded and filled the struct.
    let kind = unsafe { stat.assume_init() }.f_type;
    Ok(kind == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> Result<(), PinError> {
    let target = c_string(path)?;
    let kind = c"bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount(io::Error::last_os_error()));
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

fn c_string(path: &Path) -> Result<CString, PinError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| PinError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stable_short_digests() {
        let version = object_version(b"object");
        assert_eq!(version.len(), 12);
        assert_eq!(version, object_version(b"object"));
        assert_ne!(version, object_version(b"other object"));
    }

    #[test]
    fn layout_keeps_maps_and_links_per_version() {
        let dir = PinDir {
            base: PathBuf::from("/sys/fs/bpf/egress"),
            version: "abc".into(),
        };
        assert_eq!(
            dir.map("EGRESS_CONFIG"),
            Path::new("/sys/fs/bpf/egress/abc/maps/EGRESS_CONFIG")
        );
        assert_eq!(
            dir.link("egress_skb"),
            Path::new("/sys/fs/bpf/egress/abc/links/egress_skb")
        );
    }
}
