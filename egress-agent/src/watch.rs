//! Reload on a change to the policy files: inotify on each policy directory, and on the
//! directory of each policy file (editors and ConfigMaps replace files by renaming, which a
//! watch on the file itself would miss). The run loop debounces what this reports.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    path::{Path, PathBuf},
};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;

use crate::source::PolicySource;

#[derive(Debug, thiserror::Error)]
#[error("watching {path} for policy changes: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The names a watch reports on: every entry of a policy directory, or the policy files of
/// a file's directory.
enum Interest {
    All,
    Names(HashSet<OsString>),
}

pub struct PolicyWatcher {
    inotify: AsyncFd<Inotify>,
    interest: HashMap<WatchDescriptor, Interest>,
    buffer: Vec<u8>,
}

impl PolicyWatcher {
    /// Watches the files of `source`; `None` for the embedded default, which never changes.
    pub fn new(source: &PolicySource) -> Result<Option<Self>, WatchError> {
        let PolicySource::Files(paths) = source else {
            return Ok(None);
        };
        let fail = |path: &Path| {
            let path = path.to_owned();
            move |source| WatchError { path, source }
        };
        let inotify = Inotify::init().map_err(fail(Path::new("inotify")))?;
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        let mut interest: HashMap<WatchDescriptor, Interest> = HashMap::new();
        for path in paths {
            let (dir, name) = if path.is_dir() {
                (path.clone(), None)
            } else {
                let dir = match path.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                    _ => PathBuf::from("."),
                };
                (dir, path.file_name().map(OsString::from))
            };
            let wd = inotify.watches().add(&dir, mask).map_err(fail(&dir))?;
            let entry = interest
                .entry(wd)
                .or_insert_with(|| Interest::Names(HashSet::new()));
            match (name, entry) {
                (None, entry) => *entry = Interest::All,
                (Some(name), Interest::Names(names)) => {
                    names.insert(name);
                }
                (Some(_), Interest::All) => {}
            }
        }
        // SAFETY: the AsyncFd owns the Inotify, whose fd stays open and unchanged until the
        // AsyncFd is dropped.
        let inotify = unsafe { AsyncFd::register(inotify) }
            .map_err(|err| fail(Path::new("inotify"))(std::io::Error::other(err.to_string())))?;
        Ok(Some(Self {
            inotify,
            interest,
            buffer: vec![0; 4096],
        }))
    }

    /// Waits until something the policy is read from changed.
    pub async fn changed(&mut self) -> std::io::Result<()> {
        loop {
            let mut guard = self.inotify.readable_mut().await?;
            let mut relevant = false;
            loop {
                match guard.get_inner_mut().read_events(&mut self.buffer) {
                    Ok(events) => {
                        for event in events {
                            relevant |= match self.interest.get(&event.wd) {
                                Some(Interest::All) => true,
                                Some(Interest::Names(names)) => {
                                    event.name.is_some_and(|name| names.contains(name))
                                        || event.mask.contains(inotify::EventMask::DELETE_SELF)
                                        || event.mask.contains(inotify::EventMask::MOVE_SELF)
                                }
                                None => false,
                            };
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(err) => return Err(err),
                }
            }
            if relevant {
                return Ok(());
            }
        }
    }
}

/// Waits for a change of `watcher`'s files, forever when there is no watcher.
pub async fn next_change(watcher: &mut Option<PolicyWatcher>) -> std::io::Result<()> {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}
