//! The cgroup v2 hierarchy: where it is mounted, and the translation between the paths that
//! policies name and the ids the kernel reports.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error(
        "no cgroup2 filesystem is mounted (see /proc/self/mountinfo); mount one or pass --cgroup-root"
    )]
    NoCgroup2,
    #[error("{path} is not a cgroup2 directory: {source}")]
    NotACgroup { path: PathBuf, source: io::Error },
}

/// The mount point of the cgroup2 filesystem: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn find_cgroup2_root() -> Result<PathBuf, CgroupError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    cgroup2_root_in(&mountinfo).ok_or(CgroupError::NoCgroup2)
}

/// Parses mountinfo lines: `id parent major:minor root mountpoint options... - fstype source`.
fn cgroup2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = mount.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup2 hierarchy below one mount point.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    pub fn new(root: PathBuf) -> Result<Self, CgroupError> {
        fs::metadata(root.join("cgroup.procs")).map_err(|source| CgroupError::NotACgroup {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The kernel's id of the cgroup at `path` (relative to the root, with a leading `/`):
    /// on cgroup2 it is the inode number of the cgroup's directory.
    pub fn id_of(&self, path: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.absolute(path))?.ino())
    }

    fn absolute(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Every cgroup below the root, as (path relative to the root, id). The root is "/".
    pub fn walk(&self) -> Vec<(String, u64)> {
        let mut found = Vec::new();
        let mut pending = vec![(String::from("/"), self.root.clone())];
        while let Some((relative, dir)) = pending.pop() {
            let Ok(metadata) = fs::metadata(&dir) else {
                continue; // removed while we walked
            };
            found.push((relative.clone(), metadata.ino()));
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = if relative == "/" {
                        format!("/{name}")
                    } else {
                        format!("{relative}/{name}")
                    };
                    pending.push((child, entry.path()));
                }
            }
        }
        found
    }

    /// The paths of the cgroups named after each unit, wherever they sit in the tree
    /// (system.slice, user.slice/user-1000.slice/..., a container's nested tree).
    pub fn find_units<'a>(
        &self,
        units: impl IntoIterator<Item = &'a str>,
    ) -> HashMap<String, Vec<String>> {
        let mut wanted: HashMap<String, Vec<String>> = units
            .into_iter()
            .map(|unit| (unit.to_owned(), Vec::new()))
            .collect();
        if wanted.is_empty() {
            return wanted;
        }
        for (path, _) in self.walk() {
            let name = path.rsplit('/').next().unwrap_or_default();
            if let Some(paths) = wanted.get_mut(name) {
                paths.push(path);
            }
        }
        for paths in wanted.values_mut() {
            paths.sort();
        }
        wanted
    }
}

/// Cgroup id → path, for reporting. Filled by walking the tree, refreshed when an id is
/// unknown (a cgroup created since the last walk), at most once per `refresh_interval`.
#[derive(Debug)]
pub struct PathCache {
    hierarchy: Hierarchy,
    paths: HashMap<u64, String>,
    last_refresh: Option<std::time::Instant>,
}

impl PathCache {
    const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

    pub fn new(hierarchy: Hierarchy) -> Self {
        Self {
            hierarchy,
            paths: HashMap::new(),
            last_refresh: None,
        }
    }

    pub fn path_of(&mut self, id: u64) -> Option<&str> {
        let due = self
            .last_refresh
            .is_none_or(|at| at.elapsed() >= Self::REFRESH_INTERVAL);
        if !self.paths.contains_key(&id) && due {
            self.paths = self
                .hierarchy
                .walk()
                .into_iter()
                .map(|(p, i)| (i, p))
                .collect();
            self.last_refresh = Some(std::time::Instant::now());
        }
        self.paths.get(&id).map(String::as_str)
    }
}

/// The systemd unit a cgroup path belongs to: its last component that names a unit.
pub fn unit_of(path: &str) -> Option<&str> {
    const UNIT_SUFFIXES: [&str; 3] = [".service", ".scope", ".socket"];
    path.rsplit('/')
        .find(|part| UNIT_SUFFIXES.iter().any(|suffix| part.ends_with(suffix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_a_hybrid_host() {
        let mountinfo = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:27 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_root_in(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_no_mount_when_there_is_none_and_unescapes_paths() {
        assert_eq!(
            cgroup2_root_in("31 25 0:27 / /sys/fs/cgroup ro - tmpfs tmpfs ro"),
            None
        );
        let escaped = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_root_in(escaped),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }

    #[test]
    fn unit_is_the_deepest_unit_component() {
        assert_eq!(
            unit_of("/system.slice/trainer.service"),
            Some("trainer.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope"),
            Some("x.scope")
        );
        assert_eq!(unit_of("/egress-test"), None);
    }
}
