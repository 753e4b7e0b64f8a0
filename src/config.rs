//! Configuration: command-line flags and an optional TOML file with the same keys
//! (`cluster-domain = "cluster.local"` for `--cluster-domain`). Flags win over the file; a
//! repeatable flag given at least once replaces the file's list. Unknown keys are errors that
//! name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// How Service traffic reaches the L4 proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum L4Mode {
    /// No L4 proxying (DNS and L7 only).
    #[default]
    Off,
    /// One listener per service VIP:port, for VIPs that are local addresses.
    Bind,
    /// An nftables table: Service traffic DNATed in the kernel (or, per Service, steered to
    /// the userspace relay).
    Nftables,
}

/// The data path of a Service under `--l4 nftables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum L4DataPath {
    /// DNAT in the kernel, as kube-proxy's nftables mode.
    #[default]
    Kernel,
    /// The userspace relay (PROXY protocol, per-connection metrics).
    Proxy,
}

/// How `--l4 nftables` loads the whole table (at start and after a failed update).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum L4FullTable {
    /// One netlink batch written by switchboard (nft -f where a rule has no encoding).
    #[default]
    Netlink,
    /// `nft -f` of the whole table: slower; for comparison, or a kernel that refuses the batch.
    Nft,
}

/// `switchboard run` flags.
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML file with the same keys as these flags (kebab-case); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve the objects in this directory of manifests (watched for changes).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Watch the Kubernetes API named by this kubeconfig (default without --manifests:
    /// $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// DNS listener, UDP and TCP (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub dns: Vec<SocketAddr>,
    /// HTTP ingress listener (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub http: Vec<SocketAddr>,
    /// HTTPS ingress listener, certificates chosen by SNI from the kubernetes.io/tls Secrets
    /// that Ingress tls entries and Gateway HTTPS listeners reference (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub https: Vec<SocketAddr>,
    /// Fallback certificates for --https, for names no Secret covers: subdirectories with
    /// tls.crt and tls.key (as mounted kubernetes.io/tls Secrets), or NAME.crt + NAME.key pairs.
    #[arg(long, value_name = "DIR")]
    pub tls_cert_dir: Option<PathBuf>,
    /// HTTP balancing where a Service has no switchboard.dev/lb-algorithm annotation:
    /// least-request, round-robin, maglev[:KEY], ketama[:KEY] with KEY client-ip,
    /// header:NAME or cookie:NAME [default: least-request].
    #[arg(long, value_name = "ALGORITHM")]
    pub lb_algorithm: Option<String>,
    /// How long an HTTP endpoint is ejected after 5 failures in a row, in milliseconds
    /// (longer on repeated ejections; 0 disables ejection) [default: 30000].
    #[arg(long, value_name = "MS")]
    pub outlier_ejection_ms: Option<u64>,
    /// Threads serving --http/--https connections, each with its own event loop and its own
    /// SO_REUSEPORT socket per listener, as nginx's worker processes; 0 serves them on the
    /// process's tokio runtime (TOKIO_WORKER_THREADS threads) [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub http_workers: Option<usize>,
    /// HTTP/HTTPS: a request head must be whole within this of its first byte (a new
    /// connection's first head: of the accept; the TLS handshake too), else 408 and the
    /// connection is closed, e.g. 10s or 500ms [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub http_header_timeout: Option<String>,
    /// HTTP/HTTPS: largest request head (request line and headers) in bytes; larger: 431, or
    /// 414 for a request line that does not end within it [default: 32768].
    #[arg(long, value_name = "BYTES")]
    pub http_max_header_bytes: Option<usize>,
    /// HTTP/HTTPS: a keep-alive connection with no request for this long is closed
    /// [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub http_idle_timeout: Option<String>,
    /// HTTP/HTTPS: a client that takes none of a response for this long is dropped
    /// [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub http_write_timeout: Option<String>,
    /// HTTP/HTTPS: open client connections over all listeners; beyond it new connections are
    /// closed at once [default: 10000].
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// HTTP/HTTPS: open client connections from one IP address; 0 for no such limit
    /// [default: an eighth of --http-max-connections].
    #[arg(long, value_name = "N")]
    pub http_max_connections_per_client: Option<usize>,
    /// Admin listener: /metrics /healthz /readyz /debug/tables [default: 127.0.0.1:9153].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// No admin listener at all (no metrics, probes or table dump).
    #[arg(long, conflicts_with = "admin")]
    pub no_admin: bool,
    /// Admin listener without /debug/tables (it answers 404): for an admin address that
    /// others can reach. /metrics, /healthz and /readyz stay.
    #[arg(long)]
    pub no_debug_endpoints: bool,
    /// The cluster DNS domain [default: cluster.local].
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Upstream DNS server for names outside the cluster, `IP` or `IP:PORT` (repeatable)
    /// [default: the nameservers in /etc/resolv.conf].
    #[arg(long, value_name = "ADDR")]
    pub upstream: Vec<String>,
    /// TTL of cluster-zone DNS records, in seconds [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u32>,
    /// Pod records `a-b-c-d.NS.pod.ZONE`: disabled or insecure (any address answers, as the
    /// stock Corefile's `pods insecure`) [default: insecure].
    #[arg(long, value_name = "MODE")]
    pub pods: Option<String>,
    /// Clients allowed to transfer (AXFR, over TCP) the cluster zone, `CIDR` or `IP`
    /// (repeatable) [default: nobody].
    #[arg(long, value_name = "CIDR")]
    pub axfr_allow: Vec<String>,
    /// Forwarded DNS queries in flight at once; beyond this they get REFUSED [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_concurrent_forwards: Option<usize>,
    /// Entries in the cache of forwarded DNS answers [default: 10000].
    #[arg(long, value_name = "N")]
    pub cache_size: Option<usize>,
    /// UDP receive threads per --dns listener, each on its own SO_REUSEPORT socket
    /// [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub dns_udp_workers: Option<usize>,
    /// DNS over TCP: connections served at once per --dns listener; when full, the connection
    /// idle the longest is closed for a new one [default: 1000].
    #[arg(long, value_name = "N")]
    pub dns_tcp_max_connections: Option<usize>,
    /// DNS over TCP: connections at once from one client address per --dns listener; 0 for no
    /// cap [default: 64].
    #[arg(long, value_name = "N")]
    pub dns_tcp_max_per_client: Option<usize>,
    /// DNS over TCP: close a connection with no query for this long, e.g. 10s [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub dns_tcp_idle_timeout: Option<String>,
    /// DNS over TCP: close a connection whose answer cannot be written for this long (a client
    /// that does not read) [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub dns_tcp_write_timeout: Option<String>,
    /// On SIGTERM with --dns listeners: keep answering this long while /readyz says not
    /// ready, e.g. 5s or 500ms [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub lame_duck: Option<String>,
    /// L4 (kube-proxy) mode [default: off].
    #[arg(long, value_enum)]
    pub l4: Option<L4Mode>,
    /// This node's name, for traffic policies and topology.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// This node's zone (its topology.kubernetes.io/zone label), for trafficDistribution.
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// With --l4 nftables: remove the nftables table and its policy routing on exit.
    #[arg(long)]
    pub cleanup_on_exit: bool,
    /// The pod network, CIDR (repeatable): with --l4 nftables, traffic from elsewhere to a
    /// ClusterIP is masqueraded, and pods reach `externalTrafficPolicy: Local` services
    /// through every endpoint (kube-proxy's --cluster-cidr) [default: none].
    #[arg(long, value_name = "CIDR")]
    pub cluster_cidr: Vec<String>,
    /// With --l4 nftables: masquerade all Service traffic (kube-proxy's --masquerade-all).
    #[arg(long)]
    pub masquerade_all: bool,
    /// With --l4 nftables: NodePorts answer only on local addresses inside this CIDR
    /// (repeatable; kube-proxy's --nodeport-addresses) [default: every local address but
    /// loopback].
    #[arg(long, value_name = "CIDR")]
    pub nodeport_addresses: Vec<String>,
    /// With --l4 nftables: the data path of Services without a `switchboard.dev/l4-mode`
    /// annotation: kernel (DNAT in nftables) or proxy (the userspace relay) [default: kernel].
    #[arg(long, value_enum, value_name = "MODE")]
    pub l4_default_mode: Option<L4DataPath>,
    /// With --l4 nftables: how the whole table is loaded at start and after a failed update:
    /// netlink (one batch) or nft (`nft -f`, slower) [default: netlink].
    #[arg(long, value_enum, value_name = "HOW")]
    pub l4_full_table: Option<L4FullTable>,
    /// Forget a UDP flow after this many seconds without a datagram [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub udp_idle_timeout: Option<u64>,
    /// /healthz fails when the L4 data plane has not applied a new snapshot for this many
    /// seconds [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub l4_sync_timeout: Option<u64>,
    /// Ingresses of this class are served [default: switchboard].
    #[arg(long, value_name = "CLASS")]
    pub ingress_class: Option<String>,
    /// GatewayClasses with this controllerName are served [default: switchboard.dev/gateway].
    #[arg(long, value_name = "NAME")]
    pub gateway_controller: Option<String>,
    /// Log filter, as RUST_LOG [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Start even if another process (e.g. the switchboard being replaced) listens on the same
    /// --http, --https or --dns addresses: both serve until the old one is stopped. Without it,
    /// such a start is refused.
    #[arg(long)]
    pub takeover: bool,
    /// Address (IP or host name) of switchboard's Gateways and Ingresses, written to their
    /// status (repeatable) [default: those of --publish-service].
    #[arg(long, value_name = "ADDR")]
    pub gateway_address: Vec<String>,
    /// NAMESPACE/NAME of the Service in front of switchboard: its load balancer addresses
    /// (else external IPs, else cluster IPs) go into Gateway and Ingress status.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub publish_service: Option<String>,
    /// Namespace of the Lease that elects the status writer [default: $POD_NAMESPACE, else
    /// the service account's namespace, else default].
    #[arg(long, value_name = "NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Lease duration; renewal gives up after two thirds of it and each replica retries every
    /// 2/15 of it, as client-go's 15 s / 10 s / 2 s [default: 15].
    #[arg(long, value_name = "SECONDS")]
    pub leader_election_lease_duration: Option<u64>,
    /// Write no status and take part in no leader election.
    #[arg(long)]
    pub no_status: bool,
    /// Serve every Gateway listener's routes on the --http / --https listeners instead of
    /// opening a socket per listener port: for switchboard behind a Service that maps the
    /// Gateway's ports onto --http / --https (docs/gateway-api.md, "Listeners and ports").
    #[arg(long)]
    pub gateway_shared_ports: bool,
}

/// The TOML file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub manifests: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub dns: Option<Vec<SocketAddr>>,
    pub http: Option<Vec<SocketAddr>>,
    pub https: Option<Vec<SocketAddr>>,
    pub tls_cert_dir: Option<PathBuf>,
    pub lb_algorithm: Option<String>,
    pub outlier_ejection_ms: Option<u64>,
    pub http_workers: Option<usize>,
    pub http_header_timeout: Option<String>,
    pub http_max_header_bytes: Option<usize>,
    pub http_idle_timeout: Option<String>,
    pub http_write_timeout: Option<String>,
    pub http_max_connections: Option<usize>,
    pub http_max_connections_per_client: Option<usize>,
    pub admin: Option<SocketAddr>,
    pub no_admin: Option<bool>,
    pub no_debug_endpoints: Option<bool>,
    pub cluster_domain: Option<String>,
    pub upstream: Option<Vec<String>>,
    pub ttl: Option<u32>,
    pub pods: Option<String>,
    pub axfr_allow: Option<Vec<String>>,
    pub max_concurrent_forwards: Option<usize>,
    pub cache_size: Option<usize>,
    pub dns_udp_workers: Option<usize>,
    pub dns_tcp_max_connections: Option<usize>,
    pub dns_tcp_max_per_client: Option<usize>,
    pub dns_tcp_idle_timeout: Option<String>,
    pub dns_tcp_write_timeout: Option<String>,
    pub lame_duck: Option<String>,
    pub l4: Option<L4Mode>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub cleanup_on_exit: Option<bool>,
    pub cluster_cidr: Option<Vec<String>>,
    pub masquerade_all: Option<bool>,
    pub nodeport_addresses: Option<Vec<String>>,
    pub l4_default_mode: Option<L4DataPath>,
    pub l4_full_table: Option<L4FullTable>,
    pub udp_idle_timeout: Option<u64>,
    pub l4_sync_timeout: Option<u64>,
    pub ingress_class: Option<String>,
    pub gateway_controller: Option<String>,
    pub log: Option<String>,
    pub takeover: Option<bool>,
    pub gateway_address: Option<Vec<String>>,
    pub publish_service: Option<String>,
    pub leader_election_namespace: Option<String>,
    pub leader_election_lease_duration: Option<u64>,
    pub no_status: Option<bool>,
    pub gateway_shared_ports: Option<bool>,
}

/// Parses the TOML config file's text. An error reads `LINE:COLUMN: message`, with the likely
/// key named for a mistyped one.
pub fn parse_file_config(text: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).map_err(|e| {
        let message = crate::hints::unknown_key(e.message().trim_end());
        match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                anyhow::anyhow!("{line}:{column}: {message}")
            }
            None => anyhow::anyhow!("{message}"),
        }
    })
}

/// The effective configuration of `switchboard run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub manifests: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    /// Watch the Kubernetes API (explicit kubeconfig, or no manifests given).
    pub kubernetes: bool,
    pub dns: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub tls_cert_dir: Option<PathBuf>,
    pub lb_algorithm: proxy::http::Algorithm,
    pub outlier_ejection_ms: u64,
    /// HTTP: dedicated event-loop threads (0: the process runtime).
    pub http_workers: usize,
    /// HTTP: client limits (head deadline and size, idle and write timeouts, connections).
    pub http_limits: proxy::http::ClientLimits,
    pub admin: SocketAddr,
    /// No admin listener (`--no-admin`).
    pub no_admin: bool,
    /// No /debug/tables on the admin listener (`--no-debug-endpoints`).
    pub no_debug_endpoints: bool,
    pub cluster_domain: String,
    pub upstream: Vec<SocketAddr>,
    /// DNS: TTL of cluster-zone records.
    pub ttl: u32,
    pub pods: dns::PodsMode,
    pub axfr_allow: Vec<dns::Cidr>,
    pub max_concurrent_forwards: usize,
    pub cache_size: usize,
    /// DNS: UDP receive threads per listener.
    pub dns_udp_workers: usize,
    /// DNS over TCP limits (see `dns::DnsConfig`).
    pub dns_tcp_max_connections: usize,
    pub dns_tcp_max_per_client: usize,
    pub dns_tcp_idle_timeout: std::time::Duration,
    pub dns_tcp_write_timeout: std::time::Duration,
    pub lame_duck: std::time::Duration,
    pub l4: L4Mode,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub cleanup_on_exit: bool,
    /// The pod network, for the kernel path's masquerading.
    pub cluster_cidrs: Vec<proxy::l4::kernel::IpNet>,
    pub masquerade_all: bool,
    /// NodePorts only on local addresses inside these (empty: all but loopback).
    pub nodeport_addresses: Vec<proxy::l4::kernel::IpNet>,
    pub l4_default_mode: L4DataPath,
    pub l4_full_table: L4FullTable,
    pub udp_idle_timeout: std::time::Duration,
    pub l4_sync_timeout: std::time::Duration,
    pub ingress_class: String,
    pub gateway_controller: String,
    pub log: String,
    /// Share listening addresses with another process (a hand-over restart).
    pub takeover: bool,
    /// Status: fixed addresses, the published Service, the Lease (see `crate::status`).
    pub gateway_address: Vec<String>,
    pub publish_service: Option<String>,
    pub leader_election_namespace: Option<String>,
    pub leader_election_lease_duration: std::time::Duration,
    pub no_status: bool,
    /// Gateway routes on the --http / --https listeners, no socket per listener port.
    pub gateway_shared_ports: bool,
}

/// `IP` or `IP:PORT` (port 53 by default); IPv6 may be bracketed.
pub fn parse_upstream(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    match ip.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, 53)),
        Err(_) => bail!("upstream {s:?} is not IP or IP:PORT"),
    }
}

/// One HTTP worker per CPU, as nginx's `worker_processes auto`.
fn default_http_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The `nameserver` lines of a resolv.conf.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            // Zone ids (fe80::1%eth0) cannot be used as a socket address here.
            let addr = rest.trim().split('%').next()?;
            parse_upstream(addr).ok()
        })
        .collect()
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    // `config FILE:LINE:COLUMN: message`, as manifest errors name their place.
    parse_file_config(&text).map_err(|e| anyhow::anyhow!("config {}:{e}", path.display()))
}

/// The HTTP client limits from flags over the file over defaults.
fn http_limits(args: &RunArgs, file: &FileConfig) -> anyhow::Result<proxy::http::ClientLimits> {
    let d = proxy::http::ClientLimits::default();
    let duration = |name: &str, flag: &Option<String>, file: &Option<String>, default| match flag
        .clone()
        .or(file.clone())
    {
        Some(s) => {
            let v = dns::parse_duration(&s).with_context(|| name.to_string())?;
            if v.is_zero() {
                bail!("{name}: must be more than 0");
            }
            Ok(v)
        }
        None => Ok(default),
    };
    let max_connections = args
        .http_max_connections
        .or(file.http_max_connections)
        .unwrap_or(d.max_connections);
    if max_connections == 0 {
        bail!("http-max-connections: must be at least 1");
    }
    let max_header_bytes = args
        .http_max_header_bytes
        .or(file.http_max_header_bytes)
        .unwrap_or(d.max_header_bytes);
    if max_header_bytes < 1024 {
        bail!("http-max-header-bytes: must be at least 1024");
    }
    Ok(proxy::http::ClientLimits {
        header_timeout: duration(
            "http-header-timeout",
            &args.http_header_timeout,
            &file.http_header_timeout,
            d.header_timeout,
        )?,
        max_header_bytes,
        idle_timeout: duration(
            "http-idle-timeout",
            &args.http_idle_timeout,
            &file.http_idle_timeout,
            d.idle_timeout,
        )?,
        write_timeout: duration(
            "http-write-timeout",
            &args.http_write_timeout,
            &file.http_write_timeout,
            d.write_timeout,
        )?,
        max_connections,
        max_connections_per_client: args
            .http_max_connections_per_client
            .or(file.http_max_connections_per_client)
            .unwrap_or((max_connections / 8).max(1)),
    })
}

impl Config {
    /// What shapes the compiled tables.
    pub fn table_config(&self) -> tables::TableConfig {
        tables::TableConfig {
            cluster_domain: self.cluster_domain.clone(),
            ingress_class: self.ingress_class.clone(),
            gateway_controller: self.gateway_controller.clone(),
        }
    }

    /// Merges flags over the config file (if any) over defaults.
    pub fn resolve(args: RunArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(p) => read_file_config(p)?,
            None => FileConfig::default(),
        };
        let http_limits = http_limits(&args, &file)?;
        let list = |flag: Vec<SocketAddr>, file: Option<Vec<SocketAddr>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag
            }
        };
        let upstream_strs = if args.upstream.is_empty() {
            file.upstream.clone()
        } else {
            Some(args.upstream.clone())
        };
        let upstream = match upstream_strs {
            Some(list) => list
                .iter()
                .map(|s| parse_upstream(s))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("upstream")?,
            None => std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| resolv_conf_nameservers(&t))
                .unwrap_or_default(),
        };
        let manifests = args.manifests.or(file.manifests);
        let kubeconfig = args.kubeconfig.or(file.kubeconfig);
        if let Some(dir) = &manifests {
            if !dir.is_dir() {
                bail!("manifests: {} is not a directory", dir.display());
            }
        }
        let cluster_domain = args
            .cluster_domain
            .or(file.cluster_domain)
            .unwrap_or_else(|| "cluster.local".into())
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if cluster_domain.is_empty()
            || cluster_domain
                .split('.')
                .any(|l| l.is_empty() || l.len() > 63)
        {
            bail!("cluster-domain {cluster_domain:?} is not a domain name");
        }
        let lb_algorithm = match args.lb_algorithm.or(file.lb_algorithm) {
            Some(s) => s.parse().context("lb-algorithm")?,
            None => proxy::http::Algorithm::default(),
        };
        let https = list(args.https, file.https);
        let tls_cert_dir = args.tls_cert_dir.or(file.tls_cert_dir);
        let axfr_allow_strs = if args.axfr_allow.is_empty() {
            file.axfr_allow.clone().unwrap_or_default()
        } else {
            args.axfr_allow.clone()
        };
        let axfr_allow = axfr_allow_strs
            .iter()
            .map(|s| s.parse::<dns::Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .context("axfr-allow")?;
        let pods = match args.pods.clone().or(file.pods.clone()) {
            Some(s) => s.parse::<dns::PodsMode>().context("pods")?,
            None => dns::PodsMode::Insecure,
        };
        let lame_duck = match args.lame_duck.clone().or(file.lame_duck.clone()) {
            Some(s) => dns::parse_duration(&s).context("lame-duck")?,
            None => std::time::Duration::from_secs(5),
        };
        let dns_defaults = dns::DnsConfig::default();
        let dns_duration = |flag: Option<String>,
                            file: Option<String>,
                            name: &str,
                            default: std::time::Duration|
         -> anyhow::Result<std::time::Duration> {
            let d = match flag.or(file) {
                Some(s) => dns::parse_duration(&s).with_context(|| name.to_string())?,
                None => default,
            };
            if d.is_zero() {
                bail!("{name}: must be more than 0");
            }
            Ok(d)
        };
        let dns_tcp_idle_timeout = dns_duration(
            args.dns_tcp_idle_timeout.clone(),
            file.dns_tcp_idle_timeout.clone(),
            "dns-tcp-idle-timeout",
            dns_defaults.tcp_idle_timeout,
        )?;
        let dns_tcp_write_timeout = dns_duration(
            args.dns_tcp_write_timeout.clone(),
            file.dns_tcp_write_timeout.clone(),
            "dns-tcp-write-timeout",
            dns_defaults.tcp_write_timeout,
        )?;
        let dns_tcp_max_connections = match args
            .dns_tcp_max_connections
            .or(file.dns_tcp_max_connections)
        {
            Some(0) => bail!("dns-tcp-max-connections: must be at least 1"),
            Some(n) => n,
            None => dns_defaults.tcp_max_connections,
        };
        let dns_tcp_max_per_client = args
            .dns_tcp_max_per_client
            .or(file.dns_tcp_max_per_client)
            .unwrap_or(dns_defaults.tcp_max_per_client);
        let cidrs = |key: &str, flag: &[String], file: &Option<Vec<String>>| {
            let strs = if flag.is_empty() {
                file.clone().unwrap_or_default()
            } else {
                flag.to_vec()
            };
            strs.iter()
                .map(|s| {
                    s.parse::<proxy::l4::kernel::IpNet>()
                        .map(|n| n.trunc())
                        .with_context(|| format!("{key} {s:?}: want a CIDR like 10.244.0.0/16"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let cluster_cidrs = cidrs("cluster-cidr", &args.cluster_cidr, &file.cluster_cidr)?;
        let nodeport_addresses = cidrs(
            "nodeport-addresses",
            &args.nodeport_addresses,
            &file.nodeport_addresses,
        )?;
        Ok(Config {
            cluster_cidrs,
            nodeport_addresses,
            masquerade_all: args.masquerade_all || file.masquerade_all.unwrap_or(false),
            l4_default_mode: args
                .l4_default_mode
                .or(file.l4_default_mode)
                .unwrap_or_default(),
            l4_full_table: args
                .l4_full_table
                .or(file.l4_full_table)
                .unwrap_or_default(),
            ttl: args.ttl.or(file.ttl).unwrap_or(30),
            pods,
            axfr_allow,
            max_concurrent_forwards: args
                .max_concurrent_forwards
                .or(file.max_concurrent_forwards)
                .unwrap_or(1000),
            cache_size: args.cache_size.or(file.cache_size).unwrap_or(10_000),
            dns_udp_workers: match args.dns_udp_workers.or(file.dns_udp_workers) {
                Some(0) => bail!("dns-udp-workers: must be at least 1"),
                Some(n) => n,
                None => dns::DnsConfig::default().udp_workers,
            },
            dns_tcp_max_connections,
            dns_tcp_max_per_client,
            dns_tcp_idle_timeout,
            dns_tcp_write_timeout,
            lame_duck,
            https,
            tls_cert_dir,
            lb_algorithm,
            outlier_ejection_ms: args
                .outlier_ejection_ms
                .or(file.outlier_ejection_ms)
                .unwrap_or(30_000),
            http_workers: args
                .http_workers
                .or(file.http_workers)
                .unwrap_or_else(default_http_workers),
            http_limits,
            kubernetes: kubeconfig.is_some() || manifests.is_none(),
            manifests,
            kubeconfig,
            dns: list(args.dns, file.dns),
            http: list(args.http, file.http),
            no_admin: args.no_admin || file.no_admin.unwrap_or(false),
            no_debug_endpoints: args.no_debug_endpoints || file.no_debug_endpoints.unwrap_or(false),
            admin: args
                .admin
                .or(file.admin)
                .unwrap_or_else(|| "127.0.0.1:9153".parse().unwrap()),
            cluster_domain,
            upstream,
            l4: args.l4.or(file.l4).unwrap_or_default(),
            node_name: args.node_name.or(file.node_name),
            zone: args.zone.or(file.zone),
            cleanup_on_exit: args.cleanup_on_exit || file.cleanup_on_exit.unwrap_or(false),
            udp_idle_timeout: std::time::Duration::from_secs(
                args.udp_idle_timeout
                    .or(file.udp_idle_timeout)
                    .unwrap_or(30)
                    .max(1),
            ),
            l4_sync_timeout: std::time::Duration::from_secs(
                args.l4_sync_timeout
                    .or(file.l4_sync_timeout)
                    .unwrap_or(30)
                    .max(1),
            ),
            ingress_class: args
                .ingress_class
                .or(file.ingress_class)
                .unwrap_or_else(|| "switchboard".into()),
            gateway_controller: args
                .gateway_controller
                .or(file.gateway_controller)
                .unwrap_or_else(|| "switchboard.dev/gateway".into()),
            log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
            takeover: args.takeover || file.takeover.unwrap_or(false),
            gateway_address: if args.gateway_address.is_empty() {
                file.gateway_address.unwrap_or_default()
            } else {
                args.gateway_address
            },
            publish_service: args.publish_service.or(file.publish_service),
            leader_election_namespace: args
                .leader_election_namespace
                .or(file.leader_election_namespace),
            leader_election_lease_duration: std::time::Duration::from_secs(
                args.leader_election_lease_duration
                    .or(file.leader_election_lease_duration)
                    .unwrap_or(15)
                    .max(2),
            ),
            no_status: args.no_status || file.no_status.unwrap_or(false),
            gateway_shared_ports: args.gateway_shared_ports
                || file.gateway_shared_ports.unwrap_or(false),
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
