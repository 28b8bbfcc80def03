//! The API server connection: a kube-rs client, and the two resources the agent reads as
//! untyped objects (the agent deserializes only the fields it needs, see [`super::Pod`]).

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::Config;

use super::crd::{GROUP, KIND, PLURAL, VERSION};

/// Why talking to the API server failed. One enum for the client, the watch and the status
/// writer: they fail the same ways.
#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("API server url `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("EgressPolicy {name}: {message}")]
    Object { name: String, message: String },
    #[error("EgressPolicy {name}: status still conflicting after {attempts} attempts")]
    Conflict { name: String, attempts: usize },
}

/// The client the DaemonSet uses: in-cluster service account, or `KUBECONFIG` /
/// `~/.kube/config` when run by hand. Must be called inside a tokio runtime.
pub async fn infer_client() -> Result<Client, KubeApiError> {
    let config = Config::infer().await?;
    Ok(Client::try_from(config)?)
}

/// The client of the kubeconfig file at `path` (its current context). Must be called inside a
/// tokio runtime.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<Client, KubeApiError> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let options = kube::config::KubeConfigOptions::default();
    let config = Config::from_custom_kubeconfig(kubeconfig, &options).await?;
    Ok(Client::try_from(config)?)
}

/// A client for a plain-HTTP API server (`kubectl proxy`, tests). Must be called inside a
/// tokio runtime.
pub fn client_for_url(url: &str) -> Result<Client, KubeApiError> {
    let mut config = match url.parse() {
        Ok(uri) => Config::new(uri),
        Err(e) => {
            return Err(KubeApiError::Url {
                url: url.to_string(),
                message: format!("{e}"),
            });
        }
    };
    // Status and list requests are retried by our own loops, which also mark the state stale;
    // kube's transparent retry would only delay that.
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

/// `egresspolicies.egress.dev/v1alpha1`, cluster-scoped.
pub fn egress_policy_resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

/// Core `v1` pods.
pub fn pod_resource() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Pod".into(),
        plural: "pods".into(),
    }
}

pub fn egress_policies(client: Client) -> Api<DynamicObject> {
    Api::all_with(client, &egress_policy_resource())
}

/// Pods of every namespace; the watch narrows them to one node with a field selector.
pub fn pods(client: Client) -> Api<DynamicObject> {
    Api::all_with(client, &pod_resource())
}
