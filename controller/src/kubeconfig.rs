//! Building the Kubernetes client: `--kubeconfig`, else `$KUBECONFIG` / `~/.kube/config`, else
//! the in-cluster service account, as `kube::Config::infer` tries them.
//!
//! The errors say each cause once. `kube`'s own errors put their source's text in their message
//! *and* return it as `source()`, so printing the chain (`{:#}`) repeated the innermost cause up
//! to three times (#18: "a missing kubeconfig prints the same cause three times"). Here every
//! message is flattened with [`once`] into a `ClientError` that has no source of its own.

use std::path::Path;

use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::Client;

/// Why a client could not be built; each variant's text is the whole story (no `source()`).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--kubeconfig FILE` could not be used.
    #[error("{0}")]
    Kubeconfig(String),
    /// Neither a kubeconfig nor the in-cluster configuration could be used.
    #[error(
        "no usable Kubernetes configuration: {kubeconfig}; in-cluster: {in_cluster}. \
         Pass --kubeconfig FILE, or --manifests DIR to serve a directory of manifests instead"
    )]
    NoConfig {
        kubeconfig: String,
        in_cluster: String,
    },
    #[error("building the Kubernetes client: {0}")]
    Client(String),
}

/// A client from `kubeconfig`, else `$KUBECONFIG` / `~/.kube/config`, else in-cluster; every
/// request it makes carries [`crate::kubernetes::USER_AGENT`].
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let options = KubeConfigOptions::default();
    let mut config = match kubeconfig {
        Some(path) => {
            let fail = |e: &KubeconfigError| {
                ClientError::Kubeconfig(match e {
                    KubeconfigError::ReadConfig(io, _) => {
                        format!("--kubeconfig {} cannot be read: {io}", path.display())
                    }
                    other => format!("--kubeconfig {}: {}", path.display(), once(other)),
                })
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| fail(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| fail(&e))?
        }
        None => match kube::Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(from_file) => {
                let mut config =
                    kube::Config::incluster().map_err(|in_cluster| ClientError::NoConfig {
                        kubeconfig: kubeconfig_problem(&from_file),
                        in_cluster: in_cluster_problem(&in_cluster),
                    })?;
                // What `kube::Config::infer` does after choosing a configuration.
                config.apply_debug_overrides();
                config
            }
        },
    };
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(crate::kubernetes::USER_AGENT),
    ));
    Client::try_from(config).map_err(|e| ClientError::Client(once(&e)))
}

/// A kubeconfig error in one sentence. A file that cannot be read is named plainly (kube's own
/// text quotes the path twice: `'"/x"'`).
fn kubeconfig_problem(e: &KubeconfigError) -> String {
    match e {
        KubeconfigError::ReadConfig(io, path) => {
            format!("cannot read kubeconfig {}: {io}", path.display())
        }
        KubeconfigError::FindPath => {
            "no kubeconfig ($KUBECONFIG is unset and there is no home directory)".into()
        }
        other => format!("kubeconfig: {}", once(other)),
    }
}

/// An in-cluster error in one sentence.
fn in_cluster_problem(e: &InClusterError) -> String {
    match e {
        InClusterError::ReadEnvironmentVariable(_) => {
            "not running in a pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset)"
                .into()
        }
        other => once(other),
    }
}

/// An error and its sources as one line, each cause once: a source whose text the line already
/// holds (because its parent's message embeds it) is not appended again.
pub fn once(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn once_drops_causes_already_in_the_text() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(once(&Outer(io())), "outer: gone");
        #[derive(Debug, thiserror::Error)]
        #[error("plain")]
        struct Plain(#[source] std::io::Error);
        assert_eq!(once(&Plain(io())), "plain: gone");
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_named_once() {
        let Err(e) = client(Some(Path::new("/nonexistent/kubeconfig"))).await else {
            panic!("a client from a missing file");
        };
        let e = e.to_string();
        assert_eq!(e.matches("/nonexistent/kubeconfig").count(), 1, "{e}");
        assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    }
}
