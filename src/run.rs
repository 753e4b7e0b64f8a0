//! `switchboard run`: starts the sources, the controller, and the listeners, then waits for
//! SIGTERM or SIGINT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use controller::{files::FileSource, kubernetes, Controller, Metrics};
use prometheus::Registry;
use tables::{ClusterState, Origin};
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

/// SIGHUP, SIGUSR1 and SIGUSR2 would end the process at once (their default action) with no
/// log: they are logged and ignored instead. Sources are re-read as they change, so there is
/// nothing for SIGHUP to reload; flags and the config file take a restart.
pub fn ignore_stray_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, name) in [
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ] {
        match signal(kind) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        tracing::info!(signal = name, "signal ignored: sources are re-read as they change; restart to change flags or the config file");
                    }
                });
            }
            Err(e) => tracing::warn!(signal = name, error = %e, "cannot handle signal"),
        }
    }
}

/// After the first SIGTERM/SIGINT starts a graceful shutdown, a second one exits at once.
fn exit_on_second_signal() {
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second shutdown signal: exiting at once");
        std::process::exit(130);
    });
}

/// Refuses to start where another process already listens on one of the --http, --https or
/// --dns addresses (#14.7). switchboard's listeners use SO_REUSEPORT (one socket per worker), so
/// a second instance would otherwise bind beside the first and the kernel would split the
/// traffic between two processes with different tables. A plain bind (no SO_REUSEPORT) of each
/// address fails exactly when something listens there. `--takeover` skips the check for a
/// hand-over restart: the new process binds beside the old one, which drains on SIGTERM.
fn check_addresses_free(cfg: &Config) -> anyhow::Result<()> {
    if cfg.takeover {
        return Ok(());
    }
    let in_use = |what: &str, addr: &std::net::SocketAddr| {
        anyhow::anyhow!(
            "{what} {addr} is already in use by another process (perhaps a running switchboard); \
             refusing to share it, which would split its traffic between two processes. \
             Stop the other one first, or pass --takeover for a hand-over restart"
        )
    };
    let fixed = |a: &&std::net::SocketAddr| a.port() != 0;
    for addr in cfg
        .http
        .iter()
        .chain(&cfg.https)
        .chain(&cfg.dns)
        .filter(fixed)
    {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(in_use("TCP", addr));
            }
        }
    }
    for addr in cfg.dns.iter().filter(fixed) {
        if let Err(e) = std::net::UdpSocket::bind(addr) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(in_use("UDP", addr));
            }
        }
    }
    Ok(())
}

/// Fits the client connection limits into the open files limit (#14: idle clients could take
/// every descriptor, and then the manifest source could not read its directory). The soft limit
/// is raised to the hard one first; then a reserve — a quarter of it, at least 64 and at most
/// 1,024 descriptors — stays for upstream connections, the manifest watcher, the L4 proxy and the
/// process itself, and what is left is shared by the admin listener (at most a sixteenth of the
/// limit), the DNS TCP listeners and the HTTP connections (each holding a client and an upstream
/// descriptor). Limits that do not fit are lowered in proportion, with one warning naming them.
fn fit_connection_limits(cfg: &mut Config) -> admin::AdminLimits {
    let soft = proxy::l4::raise_fd_limit();
    let mut admin = admin::AdminLimits::default();
    if soft == u64::MAX {
        return admin;
    }
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    let reserve = (soft / 4).clamp(64, 1024);
    let budget = soft.saturating_sub(reserve);
    admin.max_connections = admin.max_connections.min((soft / 16).max(1));
    admin.max_per_client = admin.max_per_client.min(admin.max_connections);
    let dns = cfg.dns.len() * cfg.dns_tcp_max_connections;
    let http = if cfg.http.is_empty() && cfg.https.is_empty() {
        0
    } else {
        2 * cfg.http_limits.max_connections
    };
    let want = admin.max_connections + dns + http;
    if want <= budget {
        return admin;
    }
    let room = budget.saturating_sub(admin.max_connections);
    let scale = |n: usize| ((n as u128 * room as u128 / (dns + http) as u128) as usize).max(1);
    cfg.dns_tcp_max_connections = scale(cfg.dns_tcp_max_connections);
    cfg.dns_tcp_max_per_client = cfg.dns_tcp_max_per_client.min(cfg.dns_tcp_max_connections);
    let limits = &mut cfg.http_limits;
    limits.max_connections = scale(limits.max_connections);
    limits.max_connections_per_client = limits
        .max_connections_per_client
        .min(limits.max_connections);
    tracing::warn!(
        open_files = soft,
        reserved = reserve,
        admin_max_connections = admin.max_connections,
        dns_tcp_max_connections = cfg.dns_tcp_max_connections,
        http_max_connections = cfg.http_limits.max_connections,
        "the open files limit is too low for the connection limits: lowered them so that {reserve} descriptors stay for upstreams, the manifest watcher and the L4 proxy"
    );
    admin
}

/// Runs until a shutdown signal.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // The start-up's clock: the first complete table's log line counts from here.
    let started = std::time::Instant::now();
    ignore_stray_signals();
    check_addresses_free(&cfg)?;
    let mut cfg = cfg;
    let admin_limits = fit_connection_limits(&mut cfg);
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).context("registering metrics")?;
    let cell = tables::new_cell(&cfg.cluster_domain);
    let (tx, rx) = controller::channel();
    let mut parts = Vec::new();
    let mut status: Option<controller::status::Status> = None;
    // Each published generation, for the L4 sync task (which acts on it instead of polling)
    // and the status writer (which starts after the first complete table).
    let (published_tx, published_rx) = tokio::sync::watch::channel(0u64);
    // The Gateway listener ports the HTTP proxy opened, for the status writer.
    let ports = tables::ports::PortReport::default();
    let serves_http = !(cfg.http.is_empty() && cfg.https.is_empty());

    // Bind the admin listener first, so probes answer (not ready) while sources start.
    let health_checks = admin::HealthChecks::default();
    let sources = controller::SourceHealth::default();
    let draining = Arc::new(AtomicBool::new(false));
    if cfg.no_admin {
        tracing::info!(
            "no admin listener (--no-admin): no /metrics, /healthz, /readyz or /debug/tables"
        );
    } else {
        let admin_listener = TcpListener::bind(cfg.admin)
            .await
            .with_context(|| format!("binding admin listener {}", cfg.admin))?;
        tracing::info!("listening on admin {}", admin_listener.local_addr()?);
        tokio::spawn(admin::serve(
            admin_listener,
            AdminState {
                registry: registry.clone(),
                cell: cell.clone(),
                health_checks: health_checks.clone(),
                sources: sources.clone(),
                draining: draining.clone(),
                debug_endpoints: !cfg.no_debug_endpoints,
            },
            admin_limits,
        ));
    }

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
        // Without --zone, the zone comes from this node's Node object, as kube-proxy does.
        if cfg.l4 != L4Mode::Off && cfg.zone.is_none() {
            if let Some(node) = cfg.node_name.clone() {
                // Short: start-up (DNS included) waits for it, and an API server that is down
                // must not hold that up for long (docs/l4.md).
                cfg.zone =
                    kubernetes::node_zone(client.clone(), &node, Duration::from_secs(2)).await;
                tracing::info!(
                    node,
                    zone = cfg.zone.as_deref().unwrap_or("-"),
                    "node zone from the Node object"
                );
            }
        }
        kubernetes::spawn(client.clone(), tx.clone(), metrics.clone());
        // The status writer: one replica (the Lease holder) writes; none of it gates serving.
        if !cfg.no_status {
            let mut status_cfg = crate::status::config(&cfg)?;
            if serves_http && !cfg.gateway_shared_ports {
                status_cfg.ports = Some(ports.clone());
            }
            let status_metrics = controller::status::StatusMetrics::new(&registry)
                .context("registering status metrics")?;
            tracing::info!(
                lease = %format!("{}/{}", status_cfg.lease.namespace, status_cfg.lease.name),
                identity = %status_cfg.lease.identity,
                "status writer: taking part in the leader election"
            );
            let (cell, mut published) = (cell.clone(), published_rx.clone());
            let first_table = async move {
                while !cell.load().synced {
                    if published.changed().await.is_err() {
                        return;
                    }
                }
            };
            status = Some(controller::status::Status::spawn(
                client,
                status_cfg,
                status_metrics,
                first_table,
            ));
        }
    }
    drop(tx);

    let state = ClusterState::new(cfg.table_config());
    tokio::spawn(
        Controller::new(state, cell.clone(), metrics, parts, sources)
            .notify_published(published_tx)
            .started_at(started)
            .run(rx),
    );

    let dns = if cfg.dns.is_empty() {
        None
    } else {
        let dns_cfg = dns::DnsConfig {
            listen: cfg.dns.clone(),
            ttl: cfg.ttl,
            pods: cfg.pods,
            axfr_allow: cfg.axfr_allow.clone(),
            upstreams: cfg.upstream.clone(),
            max_concurrent_forwards: cfg.max_concurrent_forwards,
            cache_size: cfg.cache_size,
            udp_workers: cfg.dns_udp_workers,
            tcp_max_connections: cfg.dns_tcp_max_connections,
            tcp_max_per_client: cfg.dns_tcp_max_per_client,
            tcp_idle_timeout: cfg.dns_tcp_idle_timeout,
            tcp_write_timeout: cfg.dns_tcp_write_timeout,
            ..Default::default()
        };
        Some(
            dns::DnsServer::spawn(dns_cfg, cell.clone(), &registry)
                .await
                .context("starting the DNS server")?,
        )
    };
    let http = if !serves_http {
        None
    } else {
        let http_cfg = proxy::http::HttpConfig {
            http: cfg.http.clone(),
            https: cfg.https.clone(),
            tls_cert_dir: cfg.tls_cert_dir.clone(),
            lb_algorithm: cfg.lb_algorithm.clone(),
            workers: cfg.http_workers,
            client: cfg.http_limits.clone(),
            ports,
            gateway_shared_ports: cfg.gateway_shared_ports,
            outlier: proxy::http::OutlierConfig {
                base_ejection: Duration::from_millis(cfg.outlier_ejection_ms),
                ..Default::default()
            },
            ..Default::default()
        };
        Some(
            proxy::http::HttpServer::start(http_cfg, cell.clone(), &registry)
                .await
                .context("starting the HTTP proxy")?,
        )
    };
    let l4 = match cfg.l4 {
        L4Mode::Off => None,
        mode => {
            let l4_cfg = proxy::l4::L4Config {
                mode: if mode == L4Mode::Bind {
                    proxy::l4::Mode::Bind
                } else {
                    proxy::l4::Mode::Nftables
                },
                node: proxy::endpoints::NodeTopology {
                    name: cfg.node_name.clone(),
                    zone: cfg.zone.clone(),
                },
                udp_idle_timeout: cfg.udp_idle_timeout,
                sync_timeout: cfg.l4_sync_timeout,
                cleanup_on_exit: cfg.cleanup_on_exit,
                nft: proxy::l4::NftConfig {
                    nodeport_addresses: cfg.nodeport_addresses.clone(),
                    full_table_via_nft: cfg.l4_full_table == crate::config::L4FullTable::Nft,
                    ..Default::default()
                },
                kernel: proxy::l4::kernel::KernelConfig {
                    cluster_cidrs: cfg.cluster_cidrs.clone(),
                    masquerade_all: cfg.masquerade_all,
                    default_relay: cfg.l4_default_mode == crate::config::L4DataPath::Proxy,
                    ..Default::default()
                },
                published: Some(published_rx.clone()),
                ..Default::default()
            };
            let l4 = proxy::l4::L4::start(l4_cfg, cell.clone(), &registry)
                .await
                .context("starting the L4 proxy")?;
            let health = l4.health();
            admin::add_health_check(&health_checks, "l4", move || health.check());
            Some(l4)
        }
    };
    tokio::spawn(release_start_up_peak(
        cell.clone(),
        l4.as_ref().map(|l4| l4.health()),
    ));
    tracing::info!(
        cluster_domain = %cfg.cluster_domain,
        upstreams = ?cfg.upstream,
        node = cfg.node_name.as_deref().unwrap_or("-"),
        "switchboard started"
    );

    shutdown_signal().await;
    exit_on_second_signal();
    if let Some(status) = status {
        // Gives the Lease up first, so a standby takes over while this one drains.
        status.shutdown().await;
    }
    if let Some(dns) = dns {
        // Lame duck: not ready (load balancers drain us) but still answering.
        draining.store(true, Ordering::Relaxed);
        dns.shutdown(cfg.lame_duck).await;
    }
    if let Some(l4) = l4 {
        l4.shutdown().await;
    }
    if let Some(http) = http {
        http.shutdown().await;
    }

    // Nothing holds requests open yet; give log lines a moment to flush.
    tokio::time::sleep(Duration::from_millis(10)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Once every source has synced and the L4 path (when on) has installed that table, hands the
/// memory freed since start back to the system: the parsed manifests or API pages, the
/// intermediate states and the first full nftables batch. mimalloc would purge it too, but
/// only after its delay, and part of it stays resident until the next allocation pressure
/// (docs/memory.md, "After start").
async fn release_start_up_peak(cell: tables::SnapshotCell, l4: Option<proxy::l4::Health>) {
    loop {
        let snap = cell.load();
        let l4_done = l4
            .as_ref()
            .is_none_or(|h| h.applied_generation() >= snap.generation);
        if snap.synced && l4_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    release_free_memory();
}

/// What hands freed memory back to the system: set by the binary, which owns the allocator
/// (`main.rs`); nothing when unset (tests, `--features system-alloc`).
pub static RELEASE_FREE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

fn release_free_memory() {
    if let Some(release) = RELEASE_FREE_MEMORY.get() {
        release();
    }
}
