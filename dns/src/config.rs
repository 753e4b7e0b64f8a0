//! Settings of the DNS server, filled by the binary from flags and the config file.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// `--pods`: whether `a-b-c-d.<ns>.pod.<zone>` names answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodsMode {
    /// NXDOMAIN for every pod name.
    Disabled,
    /// Answer any well-formed dashed address without checking that such a pod exists (the
    /// stock Corefile's `pods insecure`).
    #[default]
    Insecure,
}

impl FromStr for PodsMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "disabled" => Ok(PodsMode::Disabled),
            "insecure" => Ok(PodsMode::Insecure),
            other => Err(ConfigError(format!(
                "pods: {other:?} is not disabled or insecure"
            ))),
        }
    }
}

/// A configuration value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// An address block (`10.0.0.0/8`, `fd00::/64`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Compare IPv4-mapped IPv6 peers (dual-stack sockets) as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError(format!("{s:?} is not an address or CIDR block"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses `500ms`, `5s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError(format!("{s:?} is not a duration (e.g. 500ms, 5s, 1m)"));
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Everything the DNS server needs besides the snapshot cell and the metrics registry.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP listeners.
    pub listen: Vec<SocketAddr>,
    /// TTL of cluster-zone records (`--ttl`, default 30, as the stock Corefile).
    pub ttl: u32,
    pub pods: PodsMode,
    /// Clients allowed to AXFR the cluster zone (over TCP); empty = nobody.
    pub axfr_allow: Vec<Cidr>,
    /// Upstream servers for names outside the cluster zone, tried in order (healthy first).
    pub upstreams: Vec<SocketAddr>,
    /// Forwarded queries in flight at once; a query beyond this gets REFUSED.
    pub max_concurrent_forwards: usize,
    /// Entries in the forwarding cache (positive and negative together).
    pub cache_size: usize,
    /// Caps on cached TTLs (CoreDNS `cache`: 3600 s success, 1800 s denial).
    pub cache_max_ttl: u32,
    pub cache_max_negative_ttl: u32,
    /// Negative answers without an SOA are cached this long.
    pub cache_negative_default_ttl: u32,
    /// How long past its expiry an answer may be served when every upstream fails.
    pub serve_stale: Duration,
    /// TTL of a stale answer.
    pub stale_ttl: u32,
    /// Time to wait for one upstream before trying the next.
    pub forward_timeout: Duration,
    /// Loop detection: probe every upstream at start (until the first answered probe, at most
    /// 30 s, as CoreDNS's `loop`), re-probe an upstream when one of our own forwarded queries
    /// seems to come back from it, and stop forwarding to an upstream that loops.
    pub loop_detect: bool,
    /// TCP connections served at once per listener. When full, the connection idle the longest
    /// is closed to admit the new one (Knot, Unbound); with none idle the new one is closed.
    pub tcp_max_connections: usize,
    /// TCP connections at once from one client address (per listener); 0 = no per-client cap.
    pub tcp_max_per_client: usize,
    /// A TCP connection with no query for this long is closed (also the limit for reading the
    /// rest of a started query).
    pub tcp_idle_timeout: Duration,
    /// A TCP answer that cannot be written for this long (the client does not read) closes the
    /// connection.
    pub tcp_write_timeout: Duration,
    /// UDP sockets per listener (SO_REUSEPORT), each served by its own task with its own
    /// pre-encoded answer cache.
    pub udp_workers: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: Vec::new(),
            ttl: 30,
            pods: PodsMode::Insecure,
            axfr_allow: Vec::new(),
            upstreams: Vec::new(),
            max_concurrent_forwards: 1000,
            cache_size: 10_000,
            cache_max_ttl: 3600,
            cache_max_negative_ttl: 1800,
            cache_negative_default_ttl: 5,
            serve_stale: Duration::from_secs(3600),
            stale_ttl: 30,
            forward_timeout: Duration::from_secs(2),
            loop_detect: true,
            tcp_max_connections: 1000,
            tcp_max_per_client: 64,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_write_timeout: Duration::from_secs(10),
            udp_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/64".parse::<Cidr>().is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("x").is_err());
    }
}
