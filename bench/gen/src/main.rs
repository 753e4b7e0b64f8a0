//! `bench-gen`: the benchmark harness's Rust half (the shell and Python half is `bench/run`).
//!
//! - `bench-gen cluster`: writes one synthetic cluster (`tables::synth`, the same shape the
//!   criterion bench compiles) three ways: Kubernetes YAML for `switchboard run --manifests`
//!   (one file per service, or per namespace with `--layout namespace`), the DNS records the
//!   Kubernetes DNS spec prescribes for the DNS peers
//!   (zone files, Unbound local-data, dnsmasq hosts/config), and a dnsperf query file in a stated
//!   mix, plus `checks.jsonl`, the answers every server must give before it is timed.
//! - `bench-gen propagation`: the change-to-answer benchmark (see `propagation.rs`).
//! - `bench-gen api`: a synthetic cluster served by the test API server, for `bench/l4prog`.
//!
//! Every address is data only: ClusterIPs in 10.96.0.0/12 and pod IPs in 10.0.0.0/8 are
//! never sent traffic, only returned in DNS answers.

mod dnsq;
mod objects;
mod propagation;
mod queries;
mod records;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tables::synth::{SynthCluster, SynthSpec};

#[derive(Parser)]
#[command(
    name = "bench-gen",
    about = "Synthetic clusters and the propagation benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a synthetic cluster: manifests/, zone/, unbound.conf, dnsmasq/, queries.txt,
    /// checks.jsonl, cluster.json.
    Cluster(ClusterArgs),
    /// Time EndpointSlice changes until DNS and the tables show them.
    Propagation(propagation::Args),
    /// Serve a synthetic cluster from the test API server (`tests/apiserver`) until standard
    /// input closes: writes a kubeconfig, then prints `ready`.
    Api(ApiArgs),
}

#[derive(clap::Args)]
struct ApiArgs {
    #[arg(long)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value_t = 10)]
    headless_every: usize,
    /// Where to write the kubeconfig that names the server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Refuse streaming lists with a 422, as kube-apiserver with the WatchList feature gate
    /// off does: switchboard then lists in 500-object pages (one refused request per kind
    /// first), so one binary can be timed both ways.
    #[arg(long)]
    refuse_streaming_lists: bool,
}

fn api(a: ApiArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let spec = SynthSpec {
        services: a.services,
        endpoints_per_service: a.endpoints,
        namespaces: a.services.clamp(1, 100),
        headless_every: a.headless_every,
    };
    let streaming = if a.refuse_streaming_lists {
        apiserver::StreamingLists::Invalid
    } else {
        apiserver::StreamingLists::Served
    };
    let (_rt, server) = objects::serve(&SynthCluster::generate(&spec), streaming)?;
    server.write_kubeconfig(&a.kubeconfig)?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(server);
    Ok(())
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// Number of services.
    #[arg(long)]
    services: usize,
    /// Namespaces [default: min(services, 100)].
    #[arg(long)]
    namespaces: Option<usize>,
    /// Endpoints per service (all ready).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Every Nth service is headless (0: none).
    #[arg(long, default_value_t = 10)]
    headless_every: usize,
    /// How the manifests are laid out in files.
    #[arg(long, value_enum, default_value_t = objects::Layout::Service)]
    layout: objects::Layout,
    /// Lines in the dnsperf query file.
    #[arg(long, default_value_t = 100_000)]
    queries: usize,
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// Output directory (replaced).
    #[arg(long)]
    out: PathBuf,
}

fn cluster(a: ClusterArgs) -> anyhow::Result<()> {
    let spec = SynthSpec {
        services: a.services,
        endpoints_per_service: a.endpoints,
        namespaces: a.namespaces.unwrap_or(a.services.clamp(1, 100)),
        headless_every: a.headless_every,
    };
    let c = SynthCluster::generate(&spec);
    let zone = a.zone.trim_end_matches('.').to_ascii_lowercase();
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("removing {}", a.out.display()))?;
    }
    let dir = |d: &str| -> anyhow::Result<PathBuf> {
        let p = a.out.join(d);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };
    let manifests = dir("manifests")?;
    objects::ManifestFiles::new(a.layout, &c.services, &c.slices)?.write_all(&manifests)?;
    let (records, names) = records::Records::build(&zone, &c.services, &c.slices);
    let (fwd, rev) = records.zone_files();
    let zdir = dir("zone")?;
    std::fs::write(zdir.join(format!("{zone}.zone")), fwd)?;
    std::fs::write(zdir.join(format!("{}.zone", records::REVERSE_ZONE)), rev)?;
    std::fs::write(
        a.out.join("unbound-local-data.conf"),
        records.unbound_local_data(),
    )?;
    let (hosts, conf) = records.dnsmasq();
    let ddir = dir("dnsmasq")?;
    std::fs::write(ddir.join("hosts"), hosts)?;
    std::fs::write(ddir.join("records.conf"), conf)?;
    std::fs::write(
        a.out.join("queries.txt"),
        queries::query_file(&names, &zone, a.queries, 0x5eed),
    )?;
    std::fs::write(
        a.out.join("checks.jsonl"),
        queries::checks(&records, &names, &zone),
    )?;
    let summary = json!({
        "zone": zone,
        "services": spec.services,
        "namespaces": spec.namespaces,
        "endpoints_per_service": spec.endpoints_per_service,
        "endpoints": spec.endpoints(),
        "headless_services": names.headless.len(),
        "clusterip_services": names.cluster_ip.len(),
        "srv_names": names.srv_cluster_ip.len() + names.srv_headless.len(),
        "records": records.count(),
        "queries": a.queries,
        "mix": queries::MIX.iter().map(|(k, v)| json!({ "class": k, "per_100": v })).collect::<Vec<_>>(),
    });
    std::fs::write(
        a.out.join("cluster.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("{summary}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Cluster(a) => cluster(a),
        Cmd::Propagation(a) => propagation::run(a),
        Cmd::Api(a) => api(a),
    }
}
