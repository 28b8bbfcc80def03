//! The control socket: a Unix stream socket, mode 0600 owned by root, or 0660 with a group
//! whose members may read (status, rules, explain). Each request is handed to the run loop
//! with the client's uid from its peer credentials; only uid 0 may change policy.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{
    ControlError,
    handler::Call,
    protocol::{Request, Response, VERSION},
};

/// Longest request line accepted; a policy path list fits many times over.
const MAX_LINE: u64 = 1 << 20;
/// A connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The bound socket; its file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Binds `path` (replacing a stale socket file that nobody listens on) with mode 0600, or
/// 0660 owned by group `group` (a name or a numeric gid).
pub fn bind(path: &Path, group: Option<&str>) -> Result<ControlSocket, ControlError> {
    let io = |what: &'static str| {
        move |source| ControlError::Socket {
            what,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("creating the directory of"))?;
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        fs::remove_file(path).map_err(io("removing the stale socket"))?;
    }
    let gid = group.map(group_id).transpose()?;
    let listener = bind_private(path).map_err(io("binding"))?;
    listener.set_nonblocking(true).map_err(io("configuring"))?;
    let listener = UnixListener::from_std(listener).map_err(io("listening on"))?;
    let socket = ControlSocket {
        listener,
        path: path.to_owned(),
    };
    let mode = match gid {
        Some(gid) => {
            std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(io("chown of"))?;
            0o660
        }
        None => 0o600,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod of"))?;
    Ok(socket)
}

/// Binds `path` with mode 0600 from the start. The socket file is created with 0777 less
/// the umask; a chmod after the bind alone would leave a moment in which anyone may connect.
fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let _umask = Umask::set(0o177);
    std::os::unix::net::UnixListener::bind(path)
}

/// A umask in force until this is dropped. The umask belongs to the process: files other
/// threads create meanwhile get at most 0600, never more than they asked for.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Self {
        // SAFETY: umask(2) cannot fail and touches no memory.
        Self(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above; restores the umask `set` replaced.
        unsafe { libc::umask(self.0) };
    }
}

/// The gid of group `name`, or `name` itself when it is a number.
fn group_id(name: &str) -> Result<u32, ControlError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let unknown = || ControlError::UnknownGroup(name.to_owned());
    let c_name = std::ffi::CString::new(name).map_err(|_| unknown())?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed `group` is a valid out-parameter; pointers inside it point into `buffer`.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buffer.len()` is its size.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(unknown());
    }
    Ok(group.gr_gid)
}

/// Accepts clients until the task is dropped; each is served on a task of its own.
pub async fn serve(socket: ControlSocket, calls: mpsc::Sender<Call>) {
    loop {
        match socket.listener.accept().await {
            Ok((stream, _)) => {
                let calls = calls.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve_client(stream, calls).await {
                        tracing::debug!(%err, "control client");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(%err, "accepting a control client failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_client(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some(line) = read_line(&mut reader).await? else {
            return Ok(());
        };
        let response = match line {
            Ok(line) => answer(&line, uid, &calls).await,
            Err(error) => Response::from_result(Err(error)),
        };
        let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
}

/// The next line, `Ok(Err(_))` for one too long (the connection is then unusable and the
/// caller answers and stops on the next read), `None` at the end of the stream or idle.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Option<Result<String, String>>> {
    let mut line = String::new();
    let read = tokio::time::timeout(
        IDLE_TIMEOUT,
        (&mut *reader).take(MAX_LINE).read_line(&mut line),
    )
    .await;
    match read {
        Err(_) | Ok(Ok(0)) => Ok(None),
        Ok(Err(err)) => Err(err),
        Ok(Ok(_)) if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE => {
            Ok(Some(Err(format!("request longer than {MAX_LINE} bytes"))))
        }
        Ok(Ok(_)) => Ok(Some(Ok(line))),
    }
}

async fn answer(line: &str, uid: u32, calls: &mpsc::Sender<Call>) -> Response {
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(err) => return Response::from_result(Err(format!("bad request: {err}"))),
    };
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(VERSION)) {
        return Response::from_result(Err(format!(
            "unsupported protocol version {version:?}: this agent speaks version {VERSION}"
        )));
    }
    let request: Request = match serde_json::from_value(value) {
        Ok(request) => request,
        Err(err) => return Response::from_result(Err(format!("bad request: {err}"))),
    };
    let (reply, answer) = oneshot::channel();
    let call = Call::Control {
        method: request.method,
        uid,
        reply,
    };
    if calls.send(call).await.is_err() {
        return Response::from_result(Err("the agent is stopping".into()));
    }
    Response::from_result(
        answer
            .await
            .unwrap_or_else(|_| Err("the agent is stopping".into())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_file_is_private_from_its_creation_and_the_umask_is_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("egress.sock");
        // The umask a service commonly runs with: a plain bind makes the socket 0755.
        let _outer = Umask::set(0o022);
        let _listener = bind_private(&path).expect("bind");
        let mode = fs::symlink_metadata(&path)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o} right after the bind");
        let probe = Umask::set(0o022);
        assert_eq!(probe.0, 0o022, "the umask before the bind is back");
    }
}
