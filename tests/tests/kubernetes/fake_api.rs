//! A fake Kubernetes API server on 127.0.0.1: list and watch of pods and EgressPolicy objects
//! with resource versions, `410 Gone` for compacted versions (as an HTTP status or as an
//! `ERROR` event), dropped watch connections, going down (connection refused) and coming back
//! on the same port, and the status subresource (GET, merge PATCH with the `resourceVersion`
//! precondition), every request recorded.
//!
//! HTTP/1.1 by hand on std sockets: one thread per connection, `Connection: close`, watch
//! streams chunked (so a drop mid-stream is an error to the client, not an end).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const POLICIES: &str = "/apis/egress.dev/v1alpha1/egresspolicies";
pub const PODS: &str = "/api/v1/pods";

/// How a compacted watch version is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    HttpStatus,
    ErrorEvent,
}

#[derive(Default)]
struct Collection {
    /// Name (policies) or UID (pods) to the object.
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, type, object), oldest first.
    history: Vec<(u64, &'static str, Value)>,
}

struct State {
    version: u64,
    /// Watches from below this version are `410 Gone`.
    compacted_below: u64,
    gone: Gone,
    policies: Collection,
    pods: Collection,
    /// Bumped to cut every open watch connection.
    epoch: u64,
    down: bool,
    /// `METHOD path?query` of every request, in order.
    pub requests: Vec<String>,
    /// (policy name, patch body) of every accepted status PATCH.
    pub patches: Vec<(String, Value)>,
}

pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeApi {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            version: 100,
            compacted_below: 0,
            gone: Gone::ErrorEvent,
            policies: Collection::default(),
            pods: Collection::default(),
            epoch: 0,
            down: false,
            requests: Vec::new(),
            patches: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            thread::spawn(move || accept_loop(listener, addr, &state, &stop))
        };
        Self {
            addr,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn change(&self, pods: bool, key: &str, kind: &'static str, object: Option<Value>) {
        let mut s = lock(&self.state);
        s.version += 1;
        let version = s.version;
        let collection = if pods { &mut s.pods } else { &mut s.policies };
        let object = match object {
            Some(mut object) => {
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                collection.objects.insert(key.to_string(), object.clone());
                object
            }
            None => {
                let Some(mut object) = collection.objects.remove(key) else {
                    return;
                };
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                object
            }
        };
        collection.history.push((version, kind, object));
    }

    /// Creates or replaces an EgressPolicy; a changed spec bumps `metadata.generation`.
    pub fn put_policy(&self, name: &str, spec: &Value) {
        let existing = lock(&self.state).policies.objects.get(name).cloned();
        let (kind, generation, status) = match &existing {
            Some(old) if old["spec"] == *spec => return,
            Some(old) => (
                "MODIFIED",
                old["metadata"]["generation"].as_i64().unwrap_or(0) + 1,
                old.get("status").cloned(),
            ),
            None => ("ADDED", 1, None),
        };
        let mut object = json!({
            "apiVersion": "egress.dev/v1alpha1", "kind": "EgressPolicy",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": generation},
            "spec": spec,
        });
        if let Some(status) = status {
            object["status"] = status;
        }
        self.change(false, name, kind, Some(object));
    }

    pub fn delete_policy(&self, name: &str) {
        self.change(false, name, "DELETED", None);
    }

    /// Adds or replaces a pod (keyed by `metadata.uid`).
    pub fn put_pod(&self, pod: Value) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .expect("pod uid")
            .to_string();
        let kind = if lock(&self.state).pods.objects.contains_key(&uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.change(true, &uid, kind, Some(pod));
    }

    pub fn delete_pod(&self, uid: &str) {
        self.change(true, uid, "DELETED", None);
    }

    /// Forgets every version so far: open and new watches from them get `410 Gone`.
    pub fn compact(&self, gone: Gone) {
        let mut s = lock(&self.state);
        // Versions before the current one are gone; a list still returns a usable one.
        s.version += 1;
        s.compacted_below = s.version;
        s.gone = gone;
        s.policies.history.clear();
        s.pods.history.clear();
    }

    /// Sends a BOOKMARK with a fresh version on every open watch; returns the version.
    pub fn bookmark(&self) -> u64 {
        let mut s = lock(&self.state);
        s.version += 1;
        let version = s.version;
        for (pods, kind) in [(true, "Pod"), (false, "EgressPolicy")] {
            let object = json!({"apiVersion": if pods { "v1" } else { "egress.dev/v1alpha1" },
                                "kind": kind, "metadata": {"resourceVersion": version.to_string()}});
            let collection = if pods { &mut s.pods } else { &mut s.policies };
            collection.history.push((version, "BOOKMARK", object));
        }
        version
    }

    /// Cuts every open watch connection mid-stream.
    pub fn drop_watches(&self) {
        lock(&self.state).epoch += 1;
    }

    /// Down: the port refuses connections and open watches are cut. Up: serving again on the
    /// same port.
    pub fn set_down(&self, down: bool) {
        let mut s = lock(&self.state);
        s.down = down;
        s.epoch += 1;
    }

    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    pub fn patches(&self) -> Vec<(String, Value)> {
        lock(&self.state).patches.clone()
    }

    pub fn policy(&self, name: &str) -> Option<Value> {
        lock(&self.state).policies.objects.get(name).cloned()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        lock(&self.state).epoch += 1;
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    state: &Arc<Mutex<State>>,
    stop: &AtomicBool,
) {
    let mut listener = Some(listener);
    while !stop.load(Ordering::SeqCst) {
        let down = lock(state).down;
        match (&listener, down) {
            (Some(_), true) => listener = None,
            (None, false) => {
                // std sets SO_REUSEADDR, so the port can be bound again at once.
                listener = TcpListener::bind(addr).ok();
                if let Some(l) = &listener {
                    l.set_nonblocking(true).expect("nonblocking");
                }
            }
            _ => {}
        }
        if let Some(l) = &listener {
            let _ = l.set_nonblocking(true);
            if let Ok((stream, _)) = l.accept() {
                let state = Arc::clone(state);
                thread::spawn(move || {
                    let _ = serve(&stream, &state);
                });
                continue;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2F", "/")))
        .collect();
    Ok(Request {
        method,
        path: path.to_string(),
        query,
        body,
    })
}

fn respond(mut stream: &TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn node_filter(query: &BTreeMap<String, String>) -> Option<String> {
    query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_string)
}

fn on_node(object: &Value, node: Option<&String>) -> bool {
    node.is_none_or(|n| object["spec"]["nodeName"].as_str() == Some(n))
}

fn serve(stream: &TcpStream, state: &Arc<Mutex<State>>) -> std::io::Result<()> {
    let request = read_request(stream)?;
    let query: Vec<String> = request
        .query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    lock(state).requests.push(format!(
        "{} {}?{}",
        request.method,
        request.path,
        query.join("&")
    ));
    let pods = request.path == PODS;
    if pods || request.path == POLICIES {
        if request.query.get("watch").map(String::as_str) == Some("true") {
            return watch(stream, state, pods, &request.query);
        }
        let node = node_filter(&request.query);
        let s = lock(state);
        let collection = if pods { &s.pods } else { &s.policies };
        let items: Vec<&Value> = collection
            .objects
            .values()
            .filter(|o| on_node(o, node.as_ref()))
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List",
                          "metadata": {"resourceVersion": s.version.to_string()}, "items": items});
        drop(s);
        return respond(stream, 200, &list);
    }
    let Some(name) = request
        .path
        .strip_prefix(&format!("{POLICIES}/"))
        .and_then(|rest| rest.strip_suffix("/status"))
        .map(str::to_string)
    else {
        return respond(stream, 404, &status(404, "NotFound", "no such path"));
    };
    let object = lock(state).policies.objects.get(&name).cloned();
    let Some(mut object) = object else {
        return respond(stream, 404, &status(404, "NotFound", "no such policy"));
    };
    if request.method == "GET" {
        return respond(stream, 200, &object);
    }
    let patch: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let precondition = &patch["metadata"]["resourceVersion"];
    if !precondition.is_null() && *precondition != object["metadata"]["resourceVersion"] {
        return respond(stream, 409, &status(409, "Conflict", "object was modified"));
    }
    // The status subresource changes only `status` (a JSON merge patch of it).
    merge_patch(&mut object["status"], &patch["status"]);
    let mut s = lock(state);
    s.patches.push((name.clone(), patch));
    s.version += 1;
    let version = s.version;
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    s.policies.objects.insert(name, object.clone());
    s.policies
        .history
        .push((version, "MODIFIED", object.clone()));
    drop(s);
    respond(stream, 200, &object)
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(key);
            }
        } else {
            merge_patch(&mut target[key.as_str()], value);
        }
    }
}

fn chunk(mut stream: &TcpStream, line: &str) -> std::io::Result<()> {
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

fn watch(
    mut stream: &TcpStream,
    state: &Arc<Mutex<State>>,
    pods: bool,
    query: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout: u64 = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290);
    let node = node_filter(query);
    let (epoch, gone) = {
        let s = lock(state);
        (s.epoch, (from < s.compacted_below).then_some(s.gone))
    };
    let gone_status = status(410, "Expired", "too old resource version");
    if gone == Some(Gone::HttpStatus) {
        return respond(stream, 410, &gone_status);
    }
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    if gone == Some(Gone::ErrorEvent) {
        chunk(
            stream,
            &format!("{}\n", json!({"type": "ERROR", "object": gone_status})),
        )?;
        return stream.write_all(b"0\r\n\r\n");
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut sent = from;
    while Instant::now() < deadline {
        let (events, cut, compacted) = {
            let s = lock(state);
            let collection = if pods { &s.pods } else { &s.policies };
            let events: Vec<(u64, &'static str, Value)> = collection
                .history
                .iter()
                .filter(|(v, k, o)| *v > sent && (*k == "BOOKMARK" || on_node(o, node.as_ref())))
                .cloned()
                .collect();
            (events, s.epoch != epoch, sent < s.compacted_below)
        };
        if cut {
            // Half a line and no terminating chunk: the client sees a broken stream.
            return stream.write_all(b"10\r\n{\"type\":\"ADD");
        }
        if compacted && events.is_empty() {
            chunk(
                stream,
                &format!("{}\n", json!({"type": "ERROR", "object": gone_status})),
            )?;
            return stream.write_all(b"0\r\n\r\n");
        }
        for (version, kind, object) in events {
            chunk(
                stream,
                &format!("{}\n", json!({"type": kind, "object": object})),
            )?;
            sent = version;
        }
        thread::sleep(Duration::from_millis(10));
    }
    stream.write_all(b"0\r\n\r\n")
}
