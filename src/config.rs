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
    /// An nftables table steering VIP traffic to one redirect/tproxy listener.
    Nftables,
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
    /// Admin listener: /metrics /healthz /readyz /debug/tables [default: 127.0.0.1:9153].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// The cluster DNS domain [default: cluster.local].
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Upstream DNS server for names outside the cluster, `IP` or `IP:PORT` (repeatable)
    /// [default: the nameservers in /etc/resolv.conf].
    #[arg(long, value_name = "ADDR")]
    pub upstream: Vec<String>,
    /// L4 (kube-proxy) mode [default: off].
    #[arg(long, value_enum)]
    pub l4: Option<L4Mode>,
    /// This node's name, for traffic policies and topology.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Ingresses of this class are served [default: switchboard].
    #[arg(long, value_name = "CLASS")]
    pub ingress_class: Option<String>,
    /// GatewayClasses with this controllerName are served [default: switchboard.dev/gateway].
    #[arg(long, value_name = "NAME")]
    pub gateway_controller: Option<String>,
    /// Log filter, as RUST_LOG [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

/// The TOML file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub manifests: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub dns: Option<Vec<SocketAddr>>,
    pub http: Option<Vec<SocketAddr>>,
    pub admin: Option<SocketAddr>,
    pub cluster_domain: Option<String>,
    pub upstream: Option<Vec<String>>,
    pub l4: Option<L4Mode>,
    pub node_name: Option<String>,
    pub ingress_class: Option<String>,
    pub gateway_controller: Option<String>,
    pub log: Option<String>,
}

/// Parses the TOML config file's text.
pub fn parse_file_config(text: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
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
    pub admin: SocketAddr,
    pub cluster_domain: String,
    pub upstream: Vec<SocketAddr>,
    pub l4: L4Mode,
    pub node_name: Option<String>,
    pub ingress_class: String,
    pub gateway_controller: String,
    pub log: String,
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
    parse_file_config(&text).with_context(|| format!("config {}", path.display()))
}

impl Config {
    /// Merges flags over the config file (if any) over defaults.
    pub fn resolve(args: RunArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(p) => read_file_config(p)?,
            None => FileConfig::default(),
        };
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
        Ok(Config {
            kubernetes: kubeconfig.is_some() || manifests.is_none(),
            manifests,
            kubeconfig,
            dns: list(args.dns, file.dns),
            http: list(args.http, file.http),
            admin: args
                .admin
                .or(file.admin)
                .unwrap_or_else(|| "127.0.0.1:9153".parse().unwrap()),
            cluster_domain,
            upstream,
            l4: args.l4.or(file.l4).unwrap_or_default(),
            node_name: args.node_name.or(file.node_name),
            ingress_class: args
                .ingress_class
                .or(file.ingress_class)
                .unwrap_or_else(|| "switchboard".into()),
            gateway_controller: args
                .gateway_controller
                .or(file.gateway_controller)
                .unwrap_or_else(|| "switchboard.dev/gateway".into()),
            log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let e = parse_file_config("dns = [\"127.0.0.1:53\"]\nclustr-domain = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("clustr-domain"), "{e}");
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "cluster-domain = \"corp.local\"\ndns = [\"127.0.0.1:53\"]\nupstream = [\"9.9.9.9\"]\nl4 = \"bind\"\n",
        )
        .unwrap();
        let cfg = Config::resolve(RunArgs {
            config: Some(path),
            dns: vec!["127.0.0.1:5353".parse().unwrap()],
            manifests: Some(dir.path().into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.cluster_domain, "corp.local");
        assert_eq!(
            cfg.dns,
            vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            cfg.upstream,
            vec!["9.9.9.9:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(cfg.l4, L4Mode::Bind);
        assert!(!cfg.kubernetes);
    }

    #[test]
    fn resolv_conf() {
        let ns = resolv_conf_nameservers("# x\nsearch a b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\n");
        assert_eq!(
            ns,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
    }
}
