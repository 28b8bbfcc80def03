//! What the Kubernetes traffic tests share: pod objects, the kubeconfig of the fake API
//! server, and probes that a connection is refused or passes, counted at the server.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use egress_tests::{AgentGuard, Client, Proto, Servers};
use serde_json::{Value, json};

use super::fake_api::FakeApi;

/// Timeout of one probe connection: a dropped SYN hangs until it expires.
pub const PROBE: Duration = Duration::from_millis(300);
pub const PASS: Duration = Duration::from_secs(3);
/// How long the server may take to report a connection it accepted.
pub const COUNT_WAIT: Duration = Duration::from_millis(500);

/// A running pod of namespace `shop` on `node` with one containerd container `app`.
pub fn pod(node: &str, name: &str, uid: &str, qos: &str, app: &str, container: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Running", "qosClass": qos,
                   "containerStatuses": [{"name": "app", "containerID": format!("containerd://{container}")}]},
    })
}

/// The policy both scenarios enforce: pods labelled `app: web` in `shop` may not open TCP
/// connections to 203.0.113.0/24; everything else is allowed.
pub fn put_web_policy(api: &FakeApi) {
    api.put_policy(
        "no-doc-for-web",
        &json!({
            "selector": {"pods": {"namespaces": ["shop"], "matchLabels": {"app": "web"}}},
            "defaultAction": "allow",
            "egress": [{"name": "doc", "action": "deny", "to": [{"cidr": "203.0.113.0/24"}],
                        "protocol": "tcp"}],
        }),
    );
}

/// A kubeconfig in `dir` that points at the fake API server.
pub fn kubeconfig(dir: &Path, api: &FakeApi) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
         users: [{{name: fake, user: {{}}}}]\n\
         contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
         current-context: fake\n",
        api.url()
    );
    fs::write(&path, text).expect("write kubeconfig");
    path
}

/// `client`'s TCP to `addr` is refused, and the server saw no connection.
pub fn assert_refused(
    agent: &AgentGuard,
    servers: &Servers,
    client: &Client,
    addr: SocketAddr,
    who: &str,
) {
    let before = servers.tcp_count(addr);
    assert!(
        !client.tcp_connect(addr, PROBE).expect("helper runs"),
        "{who}: TCP to {addr} should be refused\n{}",
        agent.output()
    );
    // Bounded wait: a connection that got through is reported by the server a little later.
    let after = servers.wait_count(Proto::Tcp, addr, before + 1, COUNT_WAIT);
    assert_eq!(after, before, "{who}: a connection reached {addr}");
}

/// `client`'s TCP to `addr` connects, and the server counted it.
pub fn assert_passes(
    agent: &AgentGuard,
    servers: &Servers,
    client: &Client,
    addr: SocketAddr,
    who: &str,
) {
    let before = servers.tcp_count(addr);
    assert!(
        client.tcp_connect(addr, PASS).expect("helper runs"),
        "{who}: TCP to {addr} should pass\n{}",
        agent.output()
    );
    let after = servers.wait_count(Proto::Tcp, addr, before + 1, COUNT_WAIT);
    assert!(after > before, "{who}: not counted at {addr}");
}
