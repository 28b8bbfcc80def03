//! `--kubernetes`'s watch against a fake API server speaking list/watch over real HTTP: the
//! snapshot follows events, survives dropped connections (re-watch from the last version) and
//! compaction (`410 Gone` as an HTTP status and as an ERROR event: relist), keeps the last
//! state marked stale while the server is down, and EgressPolicy status is written back.
//! No root needed here: nothing in this file touches the kernel (`traffic` runs the agent
//! against the same fake API server, as root, with real packets).

#[path = "kubernetes/fake_api.rs"]
mod fake_api;
#[path = "kubernetes/shared.rs"]
mod shared;
#[path = "kubernetes/traffic.rs"]
mod traffic;
#[path = "kubernetes/uncovered.rs"]
mod uncovered;

use std::time::Duration;

use egress_agent::kubernetes::client::client_for_url;
use egress_agent::kubernetes::state::Snapshot;
use egress_agent::kubernetes::status::{Outcome, StatusWriter};
use egress_agent::kubernetes::watch::{KubeOptions, KubeSource};
use egress_agent::kubernetes::{CgroupDriver, Layout};
use fake_api::{FakeApi, Gone, PODS, POLICIES};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const WEB: &str = "11111111-2222-3333-4444-555555555555";
const WEB2: &str = "66666666-7777-8888-9999-000000000000";
const DB: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const ELSEWHERE: &str = "12121212-3434-5656-7878-909090909090";
/// Every wait is bounded.
const WAIT: Duration = Duration::from_secs(15);

fn pod(name: &str, uid: &str, node: &str, qos: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Running", "qosClass": qos},
    })
}

fn web_only() -> Value {
    json!({
        "selector": {"pods": {"namespaces": ["shop"], "matchLabels": {"app": "web"}}},
        "defaultAction": "deny",
        "egress": [{"name": "api", "action": "allow", "to": [{"cidr": "198.51.100.0/24"}],
                    "protocol": "tcp", "ports": [443]}],
    })
}

fn options(layout: Layout) -> KubeOptions {
    KubeOptions {
        retry: Duration::from_millis(100),
        ..KubeOptions::new(NODE, layout)
    }
}

fn systemd_path(uid: &str, qos: &str) -> String {
    let q = qos.to_ascii_lowercase();
    format!(
        "/kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{}.slice",
        uid.replace('-', "_")
    )
}

/// The paths every pod selector resolved to, flattened and sorted.
fn pod_paths(snapshot: &Snapshot) -> Vec<String> {
    let mut paths: Vec<String> = snapshot.pods.values().flatten().cloned().collect();
    paths.sort();
    paths
}

/// The next snapshot for which `want` holds, within [`WAIT`].
async fn until(source: &mut KubeSource, what: &str, want: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let wait = async {
        loop {
            let snapshot = source.next().await.expect("the watch runs");
            if want(&snapshot) {
                return snapshot;
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no snapshot with {what} within {WAIT:?}"))
}

fn count(api: &FakeApi, prefix: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with(prefix))
        .count()
}

fn is_list(r: &str) -> bool {
    !r.contains("watch=true")
}

fn seeded() -> FakeApi {
    let api = FakeApi::start();
    api.put_policy("web-only", &web_only());
    api.put_pod(pod("web-1", WEB, NODE, "Burstable", "web"));
    api.put_pod(pod("db-1", DB, NODE, "Guaranteed", "db"));
    api.put_pod(pod("web-x", ELSEWHERE, "node-b", "BestEffort", "web"));
    api
}

#[tokio::test]
async fn snapshot_follows_list_and_watch_events() {
    let api = seeded();
    let client = client_for_url(&api.url()).expect("client");
    let mut source = KubeSource::spawn(client, options(Layout::new(CgroupDriver::Systemd)));
    let first = until(&mut source, "the listed state", |_| true).await;
    assert!(!first.stale);
    assert_eq!(first.policies.len(), 1);
    assert_eq!(first.policies[0].generation, 1);
    assert_eq!(first.set.policies[0].name, "web-only");
    assert_eq!(pod_paths(&first), [systemd_path(WEB, "Burstable")]);
    let pod_requests: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(&format!("GET {PODS}")))
        .collect();
    assert!(
        pod_requests
            .iter()
            .all(|r| r.contains(&format!("fieldSelector=spec.nodeName={NODE}"))),
        "{pod_requests:?}"
    );

    // A pod that starts later is covered as soon as the API server has it.
    api.put_pod(pod("web-2", WEB2, NODE, "BestEffort", "web"));
    let grown = until(&mut source, "web-2", |s| pod_paths(s).len() == 2).await;
    assert!(pod_paths(&grown).contains(&systemd_path(WEB2, "BestEffort")));
    api.delete_pod(WEB);
    let shrunk = until(&mut source, "web-1 gone", |s| pod_paths(s).len() == 1).await;
    assert_eq!(pod_paths(&shrunk), [systemd_path(WEB2, "BestEffort")]);

    // An invalid object is reported with the parser's message; the valid ones stay enforced.
    api.put_policy(
        "broken",
        &json!({"egress": [{"name": "x", "action": "allow", "to": [{"entity": "moon"}]}]}),
    );
    let mixed = until(&mut source, "broken", |s| s.policies.len() == 2).await;
    let broken = mixed
        .policies
        .iter()
        .find(|p| p.name == "broken")
        .expect("listed");
    let error = broken.parsed.as_ref().expect_err("invalid");
    assert!(
        error.contains("egresspolicy/broken") && error.contains("moon"),
        "{error}"
    );
    assert_eq!(
        mixed.set.policies.len(),
        1,
        "only the valid policy is enforced"
    );

    api.delete_policy("web-only");
    let gone = until(&mut source, "web-only deleted", |s| {
        s.set.policies.is_empty()
    })
    .await;
    assert!(gone.pods.is_empty(), "no pod selector left to resolve");
    source.stop();
}

#[tokio::test]
async fn rewatches_from_the_last_version_after_a_dropped_connection() {
    let api = seeded();
    let client = client_for_url(&api.url()).expect("client");
    let mut source = KubeSource::spawn(client, options(Layout::new(CgroupDriver::Cgroupfs)));
    until(&mut source, "the listed state", |_| true).await;
    let version = api.bookmark();
    // Let the bookmark reach the client before the cut.
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.drop_watches();
    api.put_pod(pod("web-2", WEB2, NODE, "Guaranteed", "web"));
    let after = until(&mut source, "web-2", |s| pod_paths(s).len() == 2).await;
    assert!(pod_paths(&after).contains(&format!("/kubepods/pod{WEB2}")));
    let from_bookmark = format!("resourceVersion={version}");
    let rewatched = |requests: &[String], path: &str| {
        requests
            .iter()
            .any(|r| r.contains(path) && r.contains("watch=true") && r.contains(&from_bookmark))
    };
    // The two resources re-watch independently: wait (bounded) for both.
    let both = async {
        while ![PODS, POLICIES]
            .iter()
            .all(|path| rewatched(&api.requests(), path))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(WAIT, both).await;
    let requests = api.requests();
    for path in [PODS, POLICIES] {
        assert!(
            rewatched(&requests, path),
            "{path}: no re-watch from the bookmark's version {version}: {requests:#?}"
        );
        let lists = requests
            .iter()
            .filter(|r| r.contains(&format!("GET {path}?")) && is_list(r))
            .count();
        assert_eq!(
            lists, 1,
            "{path}: a dropped watch must not relist: {requests:#?}"
        );
    }
    source.stop();
}

/// Down long enough for the versions the client holds to be compacted: while down the last
/// state stays, marked stale; back up, the old version is `410 Gone` and a relist brings
/// what changed meanwhile.
async fn outage_then_gone(gone: Gone) {
    let api = seeded();
    let client = client_for_url(&api.url()).expect("client");
    let mut source = KubeSource::spawn(client, options(Layout::new(CgroupDriver::Systemd)));
    let before = until(&mut source, "the listed state", |_| true).await;
    api.set_down(true);
    let stale = until(&mut source, "stale", |s| s.stale).await;
    assert_eq!(
        pod_paths(&stale),
        pod_paths(&before),
        "last known state kept"
    );
    assert_eq!(stale.set.policies.len(), 1);

    api.delete_pod(WEB);
    api.put_pod(pod("web-2", WEB2, NODE, "Guaranteed", "web"));
    api.compact(gone);
    let lists_before = api.requests().iter().filter(|r| is_list(r)).count();
    api.set_down(false);
    let want = [format!(
        "/kubepods.slice/kubepods-pod{}.slice",
        WEB2.replace('-', "_")
    )];
    let fresh = until(&mut source, "fresh state", |s| pod_paths(s) == want).await;
    let fresh = if fresh.stale {
        until(&mut source, "not stale", |s| !s.stale).await
    } else {
        fresh
    };
    assert_eq!(pod_paths(&fresh), want);
    let lists_after = api.requests().iter().filter(|r| is_list(r)).count();
    assert!(
        lists_after >= lists_before + 2,
        "both resources relisted after 410 ({gone:?}): {:#?}",
        api.requests()
    );
    source.stop();
}

#[tokio::test]
async fn relists_after_410_as_http_status_and_keeps_state_while_down() {
    outage_then_gone(Gone::HttpStatus).await;
}

#[tokio::test]
async fn relists_after_410_as_error_event_and_keeps_state_while_down() {
    outage_then_gone(Gone::ErrorEvent).await;
}

#[tokio::test]
async fn open_watches_relist_on_a_410_error_event() {
    let api = seeded();
    let client = client_for_url(&api.url()).expect("client");
    let mut source = KubeSource::spawn(client, options(Layout::new(CgroupDriver::Systemd)));
    until(&mut source, "the listed state", |_| true).await;
    api.compact(Gone::ErrorEvent);
    let relisted = async {
        while count(&api, &format!("GET {POLICIES}?")) - count_watches(&api, POLICIES) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, relisted)
        .await
        .unwrap_or_else(|_| panic!("no relist: {:#?}", api.requests()));
    api.put_policy("second", &json!({"egress": []}));
    until(&mut source, "second", |s| s.policies.len() == 2).await;
    source.stop();
}

fn count_watches(api: &FakeApi, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.contains(path) && !is_list(r))
        .count()
}

#[tokio::test]
async fn status_is_written_back_per_generation_and_node() {
    let api = seeded();
    api.put_policy(
        "broken",
        &json!({"egress": [{"name": "x", "action": "allow", "to": [{"entity": "moon"}]}]}),
    );
    let client = client_for_url(&api.url()).expect("client");
    let mut source = KubeSource::spawn(client.clone(), options(Layout::new(CgroupDriver::Systemd)));
    let snapshot = until(&mut source, "both policies", |s| s.policies.len() == 2).await;
    let mut writer = StatusWriter::new(client.clone(), NODE);
    let failures = writer.report_snapshot(&snapshot, Ok(())).await;
    assert!(failures.is_empty(), "{failures:?}");
    let status = |name: &str| api.policy(name).expect("exists")["status"].clone();
    assert_eq!(
        status("web-only"),
        json!({"observedGeneration": 1, "appliedNodes": 1, "errorNodes": 0, "errors": [],
               "applied": [NODE]})
    );
    let broken = status("broken");
    assert_eq!(broken["errorNodes"], 1);
    assert_eq!(broken["appliedNodes"], 0);
    assert_eq!(broken["errors"][0]["node"], NODE);
    assert!(
        broken["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("moon"))
    );
    let patches = api.patches().len();
    assert_eq!(patches, 2);

    // Reporting the same thing again writes nothing.
    assert!(writer.report_snapshot(&snapshot, Ok(())).await.is_empty());
    assert_eq!(api.patches().len(), patches);

    // A second node adds to the count; patches carry the resourceVersion they read.
    let mut other = StatusWriter::new(client.clone(), "node-b");
    other
        .report("web-only", 1, Outcome::Applied)
        .await
        .expect("written");
    assert_eq!(status("web-only")["appliedNodes"], 2);
    // A restarted agent (a writer that remembers nothing) is not counted twice.
    StatusWriter::new(client.clone(), "node-b")
        .report("web-only", 1, Outcome::Applied)
        .await
        .expect("written");
    assert_eq!(status("web-only")["appliedNodes"], 2);
    let (_, last) = api.patches().pop().expect("patched");
    assert!(last["metadata"]["resourceVersion"].is_string(), "{last}");

    // A new generation starts the counts over; this node failing to apply it is an error.
    api.put_policy("web-only", &json!({"egress": []}));
    let next = until(&mut source, "generation 2", |s| {
        s.policies
            .iter()
            .any(|p| p.name == "web-only" && p.generation == 2)
    })
    .await;
    assert!(
        writer
            .report_snapshot(&next, Err("map full".into()))
            .await
            .is_empty()
    );
    let web = status("web-only");
    assert_eq!(web["observedGeneration"], 2);
    assert_eq!(
        (web["appliedNodes"].clone(), web["errorNodes"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(web["errors"][0]["message"], "map full");
    source.stop();
}
