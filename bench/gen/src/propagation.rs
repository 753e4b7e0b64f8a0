//! The propagation benchmark: how long after an EndpointSlice change DNS answers it and the
//! published tables hold it, at a large cluster size, through either source.
//!
//! ```text
//!  synthetic cluster ──> manifest files  ──(rename one file)──┐
//!                   └──> test API server ──(apply one slice)──┤ t0
//!                                                             v
//!                           switchboard run ──> DNS  <── poller 1: "<host>.<svc>.<ns>.svc A" = new IP?
//!                                          └──> /metrics <── poller 2: snapshot generation > before?
//! ```
//!
//! Each change moves one endpoint of a headless service whose endpoints have hostnames (a
//! StatefulSet pod replaced) to an address no other endpoint uses, so both the endpoint's own
//! name and the service name change their answer. Pollers start before the change and stop at
//! the first poll that sees it; their resolution is the poll interval (1 ms for both). For the first changes the full `/debug/tables` dump is fetched afterwards (outside
//! the timing) to confirm the endpoint is in the route table too.
//!
//! Also reported: time from process start to `/readyz` 200, resident memory (VmRSS after sync and
//! at the end, VmHWM), and switchboard's CPU time per change, measured over a further stretch of
//! unobserved changes (no pollers) minus its idle CPU over as long a stretch.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tables::synth::{self, SynthCluster, SynthSpec};

use crate::dnsq;
use crate::objects;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Manifest files (`--layout`); a change rewrites one file (write + rename).
    Files,
    /// The test API server (`tests/apiserver`) in this process; a change is one `apply`.
    Api,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The switchboard binary.
    #[arg(long)]
    pub bin: PathBuf,
    #[arg(long, value_enum)]
    pub source: Source,
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// With `--source files`: one file per service, or one per namespace.
    #[arg(long, value_enum, default_value_t = objects::Layout::Service)]
    pub layout: objects::Layout,
    /// Namespaces [default: min(services, 100)]; `--layout namespace --namespaces 20` at 10,000
    /// services gives 20 files of 500 services (about 700 KB each).
    #[arg(long)]
    pub namespaces: Option<usize>,
    /// Scratch directory (manifests, kubeconfig, switchboard's log).
    #[arg(long)]
    pub work: PathBuf,
    /// Give up on one change after this long.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Pause between changes.
    #[arg(long, default_value_t = 50)]
    pub gap_ms: u64,
    /// Write the result (JSON) here as well as to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The running switchboard: its log lines are collected by a thread.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(bin: &Path, args: &[String], log_file: &Path) -> anyhow::Result<Proc> {
        let mut child = Command::new(bin)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let (l, path) = (log.clone(), log_file.to_path_buf());
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                l.lock().unwrap().push(line);
            }
        });
        Ok(Proc { child, log })
    }

    /// The first `listening on NAME ADDR` address for `name`.
    fn listener(&self, name: &str) -> Option<SocketAddr> {
        let needle = format!("listening on {name} ");
        self.log.lock().unwrap().iter().find_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.split_whitespace()
                .next()?
                .trim_end_matches(',')
                .parse()
                .ok()
        })
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(20)..].join("\n")
    }

    fn status(&self, key: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// utime + stime in clock ticks (100 per second on Linux).
    fn cpu_ticks(&self) -> u64 {
        let s =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = s.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Fields after the command: state is 0, utime is 11, stime is 12.
        get(11) + get(12)
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET (Connection: close): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match text.find("\r\n\r\n") {
        Some(i) => text[i + 4..].to_string(),
        None => String::new(),
    };
    // The admin listener answers with Content-Length; chunked bodies do not occur here.
    Ok((status, body))
}

fn generation(admin: SocketAddr) -> Option<u64> {
    let (_, body) = http_get(admin, "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("switchboard_snapshot_generation "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn summary(mut ms: Vec<f64>, failed: usize) -> Value {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "count": ms.len(),
        "failed": failed,
        "p50_ms": percentile(&ms, 50.0),
        "p90_ms": percentile(&ms, 90.0),
        "p99_ms": percentile(&ms, 99.0),
        "max_ms": ms.last(),
        "min_ms": ms.first(),
    })
}

/// A change ready to be made: rendered before the clock starts, so only the write (or the
/// apply) is timed.
enum Pending {
    /// Write this text to a dot-file, then rename it over the file.
    File(PathBuf, String),
    Api(Value),
}

/// Renders service `i`'s current slice: its manifest file's new text (one address line differs),
/// or the EndpointSlice to apply to the API server.
fn render(
    source: Source,
    manifests: &Path,
    files: &mut objects::ManifestFiles,
    cluster: &SynthCluster,
    i: usize,
) -> anyhow::Result<Pending> {
    let svc = &cluster.services[i];
    Ok(match source {
        Source::Files => {
            files.update(i, svc, &cluster.slices[i])?;
            let name = files.file_of(svc);
            let text = files.text(&name);
            Pending::File(manifests.join(name), text)
        }
        Source::Api => Pending::Api(objects::endpoint_slice(&cluster.slices[i], svc.headless)),
    })
}

/// Makes the change: rewrites the file (write to a dot-file, then rename over, so the watcher
/// never reads half a file) or applies the slice to the API server.
fn apply(
    pending: Pending,
    api: Option<&(tokio::runtime::Runtime, apiserver::ApiServer)>,
) -> anyhow::Result<()> {
    match pending {
        Pending::File(file, text) => {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            let tmp = file.with_file_name(format!(".{name}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &file)?;
        }
        Pending::Api(slice) => {
            let (_, server) = api.expect("api source");
            server.apply(slice);
        }
    }
    Ok(())
}

/// How many services answer their name with the addresses the cluster says (cluster IP, or
/// every endpoint address of a headless service), out of how many.
fn correct_names(addr: SocketAddr, cluster: &SynthCluster, zone: &str) -> anyhow::Result<usize> {
    let mut c = dnsq::Client::new(addr, Duration::from_millis(500))?;
    let mut ok = 0;
    for (svc, slice) in cluster.services.iter().zip(&cluster.slices) {
        let name = format!("{}.{}.svc.{zone}", svc.name, svc.namespace);
        let mut want: Vec<IpAddr> = if svc.headless {
            slice.endpoints.iter().map(|e| e.addresses[0]).collect()
        } else {
            svc.cluster_ips.clone()
        };
        want.retain(|ip| ip.is_ipv4());
        want.sort();
        let Some(answer) = c.query_a(&name) else {
            continue;
        };
        let mut got: Vec<IpAddr> = answer.a.iter().map(|ip| IpAddr::V4(*ip)).collect();
        got.sort();
        ok += (got == want) as usize;
    }
    Ok(ok)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = SynthSpec {
        endpoints_per_service: args.endpoints,
        namespaces: args.namespaces.unwrap_or(args.services.clamp(1, 100)),
        ..SynthSpec::new(args.services)
    };
    let mut cluster = SynthCluster::generate(&spec);
    let zone = "cluster.local";
    // Headless services whose endpoints carry hostnames (StatefulSet-style).
    let candidates: Vec<usize> = (0..spec.services)
        .filter(|&i| {
            spec.is_headless(i)
                && cluster.slices[i]
                    .endpoints
                    .first()
                    .is_some_and(|e| e.hostname.is_some())
        })
        .collect();
    if candidates.is_empty() || args.endpoints == 0 {
        bail!("the cluster has no headless service with hostnames; use more services");
    }
    std::fs::create_dir_all(&args.work)?;
    let mut run_args: Vec<String> = [
        "run",
        "--dns",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
        "--log",
        // The controller at info: its `ready: every source has synced ... seconds=` line.
        "info,kube=warn,hyper=warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let manifests = args.work.join("manifests");
    let mut api: Option<(tokio::runtime::Runtime, apiserver::ApiServer)> = None;
    let setup = Instant::now();
    let mut files = objects::ManifestFiles::new(args.layout, &cluster.services, &cluster.slices)?;
    match args.source {
        Source::Files => {
            if manifests.exists() {
                std::fs::remove_dir_all(&manifests)?;
            }
            std::fs::create_dir_all(&manifests)?;
            files.write_all(&manifests)?;
            run_args.extend(["--manifests".into(), manifests.display().to_string()]);
        }
        Source::Api => {
            let (rt, server) = objects::serve(&cluster, apiserver::StreamingLists::Served)?;
            let kubeconfig = args.work.join("kubeconfig");
            server.write_kubeconfig(&kubeconfig)?;
            run_args.extend(["--kubeconfig".into(), kubeconfig.display().to_string()]);
            api = Some((rt, server));
        }
    }
    let setup_ms = setup.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "propagation: {} services, {} endpoints, source {:?}, written in {setup_ms:.0} ms",
        spec.services,
        spec.endpoints(),
        args.source
    );

    let started = Instant::now();
    let mut sb = Proc::spawn(&args.bin, &run_args, &args.work.join("switchboard.log"))?;
    let admin = loop {
        if let Some(a) = sb.listener("admin") {
            break a;
        }
        if let Ok(Some(s)) = sb.child.try_wait() {
            bail!("switchboard exited ({s}):\n{}", sb.tail());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("switchboard did not log its admin listener:\n{}", sb.tail());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    loop {
        if matches!(http_get(admin, "/readyz"), Ok((200, _))) {
            break;
        }
        if let Ok(Some(s)) = sb.child.try_wait() {
            bail!("switchboard exited ({s}):\n{}", sb.tail());
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("switchboard not ready after 300 s:\n{}", sb.tail());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    // The first complete table, as switchboard's log says it ("ready: every source has synced
    // ... seconds=").
    let logged_ready_s = sb
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("ready: every source has synced"))
        .and_then(|l| l.split("seconds=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    // Listeners are logged before "switchboard started".
    while !sb.logged("switchboard started") && started.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_ready = sb.status("VmRSS:");
    eprintln!(
        "propagation: ready after {ready_ms:.0} ms, VmRSS {} MiB",
        rss_ready.unwrap_or(0) / 1024
    );

    // DNS, if switchboard serves it: the first candidate's first endpoint must answer.
    let dns_addr = sb.listener("dns/udp");
    let name_of = |c: &SynthCluster, i: usize, j: usize| {
        let svc = &c.services[i];
        let host = c.slices[i].endpoints[j]
            .hostname
            .clone()
            .unwrap_or_default();
        format!("{host}.{}.{}.svc.{zone}", svc.name, svc.namespace)
    };
    let dns_state = match dns_addr {
        None => "not yet implemented (no dns/udp listener logged)".to_string(),
        Some(addr) => {
            let mut c = dnsq::Client::new(addr, Duration::from_millis(500))?;
            let i = candidates[0];
            let want = cluster.slices[i].endpoints[0].addresses[0];
            match c.query_a(&name_of(&cluster, i, 0)) {
                Some(a) if a.a.iter().any(|ip| IpAddr::V4(*ip) == want) => "ok".into(),
                other => format!("not answering cluster names (got {other:?})"),
            }
        }
    };
    let dns_ok = dns_state == "ok";
    eprintln!("propagation: dns {dns_state}");
    // Every service's name, checked once after ready (not timed: ready already means the
    // complete table is published; this says it is right).
    let correct = match dns_addr.filter(|_| dns_ok) {
        Some(addr) => Some(correct_names(addr, &cluster, zone)?),
        None => None,
    };
    eprintln!(
        "propagation: {} of {} service names correct after ready",
        correct.unwrap_or(0),
        spec.services
    );
    let changed_file_bytes = match args.source {
        Source::Files => {
            let name = files.file_of(&cluster.services[candidates[0]]);
            Some(files.text(&name).len())
        }
        Source::Api => None,
    };

    let timeout = Duration::from_millis(args.timeout_ms);
    let (mut dns_ms, mut tables_ms) = (Vec::new(), Vec::new());
    let (mut dns_failed, mut tables_failed) = (0, 0);
    let mut verified = Vec::new();
    let mut dump_ms = Vec::new();
    let mut dump_ticks = 0;
    let cpu0 = sb.cpu_ticks();
    let loop_start = Instant::now();
    for k in 0..args.changes {
        let i = candidates[k % candidates.len()];
        let j = (k / candidates.len()) % args.endpoints;
        let ip = synth::spare_pod_ip(k as u32);
        cluster.slices[i] = synth::with_address(&cluster.slices[i], j, ip);
        let name = name_of(&cluster, i, j);
        let Some(gen0) = generation(admin) else {
            bail!("no switchboard_snapshot_generation in /metrics")
        };
        let barrier = Arc::new(Barrier::new(3));
        let t0 = Arc::new(Mutex::new(Instant::now()));
        let (dns_res, tables_res) = std::thread::scope(|s| {
            let dns = {
                let (barrier, t0, name) = (barrier.clone(), t0.clone(), name.clone());
                s.spawn(move || -> Option<f64> {
                    let mut c = dns_addr
                        .filter(|_| dns_ok)
                        .map(|a| dnsq::Client::new(a, Duration::from_millis(50)));
                    barrier.wait();
                    let start = *t0.lock().unwrap();
                    let c = c.as_mut()?.as_mut().ok()?;
                    while start.elapsed() < timeout {
                        if let Some(a) = c.query_a(&name) {
                            if a.a.len() == 1 && IpAddr::V4(a.a[0]) == ip {
                                return Some(start.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    None
                })
            };
            let tables = {
                let (barrier, t0) = (barrier.clone(), t0.clone());
                s.spawn(move || -> Option<f64> {
                    barrier.wait();
                    let start = *t0.lock().unwrap();
                    while start.elapsed() < timeout {
                        if generation(admin).is_some_and(|g| g > gen0) {
                            return Some(start.elapsed().as_secs_f64() * 1e3);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    None
                })
            };
            // The change itself: t0 is set just before it, then the pollers are released.
            let pending = render(args.source, &manifests, &mut files, &cluster, i);
            *t0.lock().unwrap() = Instant::now();
            let change = pending.and_then(|p| apply(p, api.as_ref()));
            barrier.wait();
            let res = (dns.join().unwrap(), tables.join().unwrap());
            change.map(|()| res)
        })?;
        match dns_res {
            Some(ms) => dns_ms.push(ms),
            None if dns_ok => dns_failed += 1,
            None => {}
        }
        match tables_res {
            Some(ms) => tables_ms.push(ms),
            None => tables_failed += 1,
        }
        if k < 3 {
            let t = Instant::now();
            let c = sb.cpu_ticks();
            let (_, body) = http_get(admin, "/debug/tables")?;
            dump_ms.push(t.elapsed().as_secs_f64() * 1e3);
            // The dump is not part of a change's cost.
            dump_ticks += sb.cpu_ticks() - c;
            let needle = format!("endpoint {ip}:");
            verified.push(
                json!({ "change": k, "ip": ip.to_string(), "in_tables": body.contains(&needle) }),
            );
        }
        std::thread::sleep(Duration::from_millis(args.gap_ms));
    }
    let loop_secs = loop_start.elapsed().as_secs_f64();
    let cpu_ms = (sb.cpu_ticks() - cpu0 - dump_ticks) as f64 * 10.0;

    // CPU per change without pollers: the idle cost over a quiet stretch, then the same stretch
    // with one unobserved change every `QUIET_GAP`.
    const QUIET_GAP: Duration = Duration::from_millis(250);
    let quiet = args.changes.min(20);
    let c = sb.cpu_ticks();
    std::thread::sleep(QUIET_GAP * quiet as u32);
    let idle = sb.cpu_ticks() - c;
    let c = sb.cpu_ticks();
    for q in 0..quiet {
        let k = args.changes + q;
        let i = candidates[k % candidates.len()];
        let j = (k / candidates.len()) % args.endpoints;
        cluster.slices[i] =
            synth::with_address(&cluster.slices[i], j, synth::spare_pod_ip(k as u32));
        apply(
            render(args.source, &manifests, &mut files, &cluster, i)?,
            api.as_ref(),
        )?;
        std::thread::sleep(QUIET_GAP);
    }
    let quiet_cpu_ms =
        (sb.cpu_ticks() - c).saturating_sub(idle) as f64 * 10.0 / quiet.max(1) as f64;
    let rss_end = sb.status("VmRSS:");
    let hwm = sb.status("VmHWM:");
    sb.terminate();
    drop(api);

    let pods = spec.endpoints();
    let coredns_mb = (pods + spec.services) as f64 * 0.000858 + 49.1;
    let result = json!({
        "source": format!("{:?}", args.source).to_lowercase(),
        "layout": match args.source {
            Source::Files => format!("{:?}", args.layout).to_lowercase(),
            Source::Api => "api".into(),
        },
        "files": matches!(args.source, Source::Files).then(|| files.count()),
        "changed_file_bytes": changed_file_bytes,
        "logged_ready_s": logged_ready_s,
        "correct_after_ready": correct,
        "services": spec.services,
        "endpoints": pods,
        "changes": args.changes,
        "setup_ms": setup_ms,
        "ready_ms": ready_ms,
        "dns_state": dns_state,
        "dns": summary(dns_ms, dns_failed),
        "tables": summary(tables_ms, tables_failed),
        "verified_in_dump": verified,
        "debug_tables_fetch_ms": dump_ms,
        "cpu_ms_per_change_polled": cpu_ms / args.changes.max(1) as f64,
        "cpu_ms_per_change": quiet_cpu_ms,
        "quiet_changes": quiet,
        "idle_cpu_pct": idle as f64 * 10.0 / (QUIET_GAP.as_secs_f64() * 1e3 * quiet.max(1) as f64) * 100.0,
        "loop_seconds": loop_secs,
        "rss_ready_kib": rss_ready,
        "rss_end_kib": rss_end,
        "hwm_kib": hwm,
        "coredns_model_mb": coredns_mb,
    });
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, text)?;
    }
    Ok(())
}
