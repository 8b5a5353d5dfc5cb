//! Kubernetes mode: the API client (kubeconfig or in-cluster) and the Kubernetes source, whose
//! local pods' interfaces are found over rtnetlink in the agent's (the node's) network namespace.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fqdnd::pod_interface::NetlinkInterfaces;
use kube::config::{KubeConfigOptions, Kubeconfig};
use policy_sync::source::kubernetes::{KubeOptions, KubeSource};
use prometheus_client::registry::Registry;

use crate::config::Config;

/// How often local pods' interfaces are looked up again (a recreated sandbox has a new veth).
const INTERFACE_RECHECK: Duration = Duration::from_secs(2);

/// The client for `--kubeconfig FILE`, else $KUBECONFIG or ~/.kube/config, else the pod's
/// ServiceAccount token and CA (in-cluster). Nothing is sent to the API server yet.
pub async fn client(config: &Config) -> anyhow::Result<kube::Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kc =
                Kubeconfig::read_from(path).with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes client configuration: not in a pod, no $KUBECONFIG or ~/.kube/config (or pass --kubeconfig)",
        )?,
    };
    tracing::info!(server = %kube_config.cluster_url, node = %config.node_name, "Kubernetes source");
    kube::Client::try_from(kube_config).context("building the Kubernetes client")
}

/// Start the Kubernetes source and register its metrics.
pub async fn source(config: &Config, registry: &mut Registry) -> anyhow::Result<KubeSource> {
    let client = client(config).await?;
    let interfaces = NetlinkInterfaces::new().context("opening rtnetlink to find pods' interfaces")?;
    let source = KubeSource::start(
        client,
        KubeOptions {
            node_name: config.node_name.clone(),
            state_dir: Some(config.state_dir.clone()),
            interfaces: Arc::new(interfaces),
            interface_recheck: INTERFACE_RECHECK,
        },
    );
    fqdnd::kube_metrics::register(registry, source.stats());
    Ok(source)
}
