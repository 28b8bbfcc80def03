//! cgroup v2 fixtures: finding the cgroup2 mount and test cgroups that remove themselves.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use crate::error::{FixtureError, IoContext as _, Result};

/// Prefix of every cgroup the fixtures create directly under the cgroup2 root.
pub const CGROUP_PREFIX: &str = "egress-test-";

/// The mount point of the cgroup2 filesystem, parsed from /proc/self/mountinfo
/// (the field after " - " is the filesystem type; the fifth field is the mount point).
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .ctx(|| "reading /proc/self/mountinfo".to_owned())?;
    parse_cgroup2_root(&info)
        .ok_or_else(|| FixtureError::Other("no cgroup2 filesystem is mounted".to_owned()))
}

fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// A cgroup created for a test; removed (with its descendants) on drop.
#[derive(Debug)]
pub struct CgroupGuard {
    path: PathBuf,
    relative: String,
}

impl CgroupGuard {
    /// Creates `<cgroup2 root>/egress-test-<name>-<pid>`.
    pub fn new(name: &str) -> Result<Self> {
        let root = cgroup2_root()?;
        let dir = format!("{CGROUP_PREFIX}{name}-{}", std::process::id());
        let path = root.join(&dir);
        fs::create_dir(&path).ctx(|| format!("mkdir {}", path.display()))?;
        Ok(Self {
            path,
            relative: format!("/{dir}"),
        })
    }

    /// Creates a child cgroup `name` below this one.
    pub fn child(&self, name: &str) -> Result<Self> {
        let path = self.path.join(name);
        fs::create_dir(&path).ctx(|| format!("mkdir {}", path.display()))?;
        Ok(Self {
            path,
            relative: format!("{}/{name}", self.relative),
        })
    }

    /// The absolute path of the cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path relative to the cgroup2 root, with a leading slash, as policies name it.
    pub fn relative_path(&self) -> &str {
        &self.relative
    }

    /// The cgroup id: the inode number of the cgroup directory.
    pub fn id(&self) -> Result<u64> {
        let meta = fs::metadata(&self.path).ctx(|| format!("stat {}", self.path.display()))?;
        Ok(meta.ino())
    }

    /// The PIDs of the processes directly in this cgroup.
    pub fn procs(&self) -> Result<Vec<u32>> {
        let file = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&file).ctx(|| format!("reading {}", file.display()))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            eprintln!(
                "egress-tests: could not remove cgroup {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Removes a test cgroup and its descendants. Processes still inside were started by the
/// tests (their guards normally ended them already); cgroup.kill ends any stragglers.
fn remove_tree(path: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    if !procs.trim().is_empty() {
        fs::write(path.join("cgroup.kill"), "1")?;
    }
    let mut last = None;
    for _ in 0..100 {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while the kernel releases exiting tasks.
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(last.unwrap_or_else(|| io::Error::other("rmdir kept failing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount() {
        let info = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    26 25 0:24 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_root("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }
}
