//! `switchboard run`: starts the sources, the controller, and the listeners, then waits for
//! SIGTERM or SIGINT.

use std::time::Duration;

use anyhow::Context;
use controller::{files::FileSource, kubernetes, Controller, Metrics};
use prometheus::Registry;
use tables::{ClusterState, Origin, TableConfig};
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::config::{Config, L4Mode};

/// Resolves once SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Runs until a shutdown signal.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).context("registering metrics")?;
    let cell = tables::new_cell(&cfg.cluster_domain);
    let (tx, rx) = controller::channel();
    let mut parts = Vec::new();

    // Bind the admin listener first, so probes answer (not ready) while sources start.
    let admin_listener = TcpListener::bind(cfg.admin)
        .await
        .with_context(|| format!("binding admin listener {}", cfg.admin))?;
    tracing::info!("listening on admin {}", admin_listener.local_addr()?);
    tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            registry: registry.clone(),
            cell: cell.clone(),
        },
    ));

    if let Some(dir) = &cfg.manifests {
        parts.extend(controller::parts_of(Origin::Manifests));
        let source = FileSource::new(dir.clone(), tx.clone(), metrics.clone());
        let dir = dir.clone();
        std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || {
                if let Err(e) = source.run() {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot watch the manifest directory");
                }
            })
            .context("starting the manifest watcher")?;
    }
    if cfg.kubernetes {
        let client = kubernetes::client(cfg.kubeconfig.as_deref()).await?;
        parts.extend(controller::parts_of(Origin::Kubernetes));
        kubernetes::spawn(client, tx.clone(), metrics.clone());
    }
    drop(tx);

    let state = ClusterState::new(TableConfig {
        cluster_domain: cfg.cluster_domain.clone(),
        ingress_class: cfg.ingress_class.clone(),
        gateway_controller: cfg.gateway_controller.clone(),
    });
    tokio::spawn(Controller::new(state, cell.clone(), metrics, parts).run(rx));

    for addr in &cfg.dns {
        tracing::warn!(%addr, "the DNS server is not built yet; --dns is accepted but not served");
    }
    for addr in &cfg.http {
        tracing::warn!(%addr, "the HTTP proxy is not built yet; --http is accepted but not served");
    }
    if cfg.l4 != L4Mode::Off {
        tracing::warn!(mode = ?cfg.l4, "the L4 proxy is not built yet; --l4 is accepted but not served");
    }
    tracing::info!(
        cluster_domain = %cfg.cluster_domain,
        upstreams = ?cfg.upstream,
        node = cfg.node_name.as_deref().unwrap_or("-"),
        "switchboard started"
    );

    shutdown_signal().await;
    // Nothing holds requests open yet; give log lines a moment to flush.
    tokio::time::sleep(Duration::from_millis(10)).await;
    tracing::info!("stopped");
    Ok(())
}
