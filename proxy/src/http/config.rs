//! The L7 proxy's settings (`HttpConfig`), set by the binary (`src/run.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::balance::Algorithm;
use super::health::OutlierConfig;

/// Settings of the L7 proxy.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Plain listeners (HTTP/1.1 and h2c).
    pub http: Vec<SocketAddr>,
    /// TLS listeners (h2 and HTTP/1.1 by ALPN); certificates from the snapshot's Secrets.
    pub https: Vec<SocketAddr>,
    /// Fallback certificates for `https` (see `tls`).
    pub tls_cert_dir: Option<PathBuf>,
    /// Balancing algorithm where the Service has no `switchboard.dev/lb-algorithm` annotation.
    pub lb_algorithm: Algorithm,
    /// Upstream TCP connect timeout.
    pub connect_timeout: Duration,
    /// Upstream read timeout where the route sets none (None = no limit, for long polls and
    /// streams).
    pub upstream_read_timeout: Option<Duration>,
    /// Idle upstream keep-alive connections are closed after this.
    pub upstream_idle_timeout: Duration,
    /// Attempts after the first, per request (connect failures and budgeted retries).
    pub max_retries: u32,
    pub outlier: OutlierConfig,
    /// How long shutdown waits for in-flight requests.
    pub grace_period: Duration,
    /// Threads that serve the listeners, each with its own event loop (a current-thread tokio
    /// runtime) and its own SO_REUSEPORT socket per listener, as nginx's worker processes; the
    /// kernel spreads new connections over them and `listener::Spread` keeps their counts
    /// even. 0: serve on the caller's runtime.
    pub workers: usize,
    /// Client limits (`docs/reliability.md`, HTTP): what one client connection may hold.
    pub client: ClientLimits,
    /// Where the Gateway listener ports opened (or not) are reported, for the status writer
    /// (`gateway_listeners.rs`).
    pub ports: tables::ports::PortReport,
    /// Serve Gateway routes on the `http` / `https` listeners, whatever their listener's port,
    /// and open no socket per Gateway listener port (`--gateway-shared-ports`).
    pub gateway_shared_ports: bool,
}

/// Bounds on what one client connection, and one client address, may hold.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// A request head must be whole within this of its first byte (a new connection's first
    /// head: of the accept; on TLS, the handshake is bounded by it too). Past it: 408 if any
    /// of the head came, and the connection is closed (nginx `client_header_timeout`, HAProxy
    /// `timeout http-request`).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers). Larger: 431, or 414 when the request
    /// line alone does not end within it; the connection is closed.
    pub max_header_bytes: usize,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A write to the client that makes no progress for this long closes the connection (a
    /// client that never reads).
    pub write_timeout: Duration,
    /// Open client connections over all HTTP and HTTPS listeners; beyond it new connections
    /// are closed at once.
    pub max_connections: usize,
    /// Open client connections per client IP address (0: no such limit).
    pub max_connections_per_client: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_client: 10_000 / 8,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            http: vec![],
            https: vec![],
            tls_cert_dir: None,
            lb_algorithm: Algorithm::default(),
            connect_timeout: Duration::from_secs(2),
            upstream_read_timeout: None,
            upstream_idle_timeout: Duration::from_secs(60),
            max_retries: 3,
            outlier: OutlierConfig::default(),
            grace_period: Duration::from_secs(5),
            workers: 0,
            client: ClientLimits::default(),
            ports: Default::default(),
            gateway_shared_ports: false,
        }
    }
}
