//! `switchboard`: cluster DNS, kube-proxy replacement and L7 ingress for Kubernetes, in one
//! binary. See README.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use switchboard::config::{Config, RunArgs};

/// mimalloc instead of glibc's malloc: the proxy path allocates per request (pingora's header
/// maps and buffers), and glibc's malloc/free took ~12% of its CPU in `perf`. The
/// `system-alloc` feature leaves glibc's malloc in place, for heap profilers that hook it
/// (heaptrack, valgrind massif; docs/memory.md).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (15 in mimalloc v2 and v3; libmimalloc-sys names the
/// options around it, not this one).
#[cfg(not(feature = "system-alloc"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay (ms) while starting (`purge_at_once_until_started`).
#[cfg(not(feature = "system-alloc"))]
const START_PURGE_DELAY_MS: std::ffi::c_long = 20;

/// The purge delay start-up runs without (`purge_at_once_until_started`): mimalloc's default
/// (1 s) or `MIMALLOC_PURGE_DELAY`, restored once the first tables are in.
#[cfg(not(feature = "system-alloc"))]
static PURGE_DELAY: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(-2);

/// Until the first complete tables are in, freed pages go back to the system at once: start-up
/// frees tens of MiB of parsed documents, intermediate states and the first full nftables batch
/// while it allocates the tables, and with mimalloc's delay the freed pages and the new ones are
/// resident together (the process's peak: 145-150 MiB against 123-126 at 10,000 Services /
/// 100,000 endpoints with every role, docs/memory.md). After start, the delay comes back, so
/// the query and proxy paths do not pay a purge on every free.
///
/// "At once" is `START_PURGE_DELAY_MS`, not 0: with a delay of 0 every page the YAML parser
/// empties is `madvise`d back (a TLB-shootdown interrupt to every thread) and faulted in again
/// for the next file; once the endpoints' own blocks were gone from those pages (session 15),
/// that was 17% of a 10,000-file start's CPU and +0.4 s to ready (docs/memory.md).
#[cfg(not(feature = "system-alloc"))]
fn purge_at_once_until_started() {
    use std::sync::atomic::Ordering;
    // SAFETY: mimalloc's option calls take no pointers and may be made from any thread.
    unsafe {
        PURGE_DELAY.store(
            libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64,
            Ordering::Relaxed,
        );
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, START_PURGE_DELAY_MS);
    }
}

/// Purges mimalloc's freed pages now and puts its purge delay back (`run::RELEASE_FREE_MEMORY`).
#[cfg(not(feature = "system-alloc"))]
fn mimalloc_collect() {
    use std::sync::atomic::Ordering;
    // SAFETY: `mi_collect` takes no pointers; it walks mimalloc's own heaps and arenas, which
    // are the global allocator's, and is safe to call from any thread at any time; so are the
    // option calls.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        let delay = PURGE_DELAY.load(Ordering::Relaxed);
        if delay != -2 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay as _);
        }
    }
}

#[derive(Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the data plane.
    Run(Box<RunArgs>),
    /// Run the bundled example cluster: stand-in pods for every endpoint, and `run` on the
    /// directory with DNS on 127.0.0.1:5353, HTTP on 127.0.0.1:8088, admin on 127.0.0.1:9153.
    Demo {
        /// The manifest directory.
        #[arg(default_value = "examples/demo")]
        dir: PathBuf,
    },
    /// Check a manifest directory and/or a config file: print what `run` would serve (services,
    /// DNS names, HTTP routes, L4 frontends) and warnings; exit 1 listing the errors by
    /// FILE:LINE:COLUMN when anything would be rejected.
    Check {
        /// The manifest directory [default: the config file's `manifests`].
        dir: Option<PathBuf>,
        /// The TOML config file of `run --config`: its keys are checked, and its
        /// cluster-domain, ingress-class and gateway-controller shape the tables.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also print the whole compiled tables, as /debug/tables does.
        #[arg(long)]
        tables: bool,
    },
    /// Remove what `run --l4 nftables` installed: the `inet switchboard` nftables table and its
    /// policy routing rule. Nothing else is touched.
    Cleanup,
    /// Start stand-in pods for every endpoint in a manifest directory (for the demo).
    DemoBackends {
        /// The manifest directory (e.g. examples/demo).
        dir: PathBuf,
    },
}

fn init_logging(filter: &str) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins; hickory logs every request at INFO, so keep it at warn by default.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("{filter},hickory_server=warn,hickory_proto=warn"))
                .unwrap_or_else(|_| EnvFilter::new("info"))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn demo_args(dir: &std::path::Path) -> anyhow::Result<RunArgs> {
    let addr = |s: &str| s.parse().expect("static address");
    Ok(RunArgs {
        manifests: Some(dir.to_path_buf()),
        dns: vec![addr("127.0.0.1:5353")],
        http: vec![addr("127.0.0.1:8088")],
        admin: Some(addr("127.0.0.1:9153")),
        l4: Some(switchboard::config::L4Mode::Bind),
        node_name: Some("demo-node".into()),
        ..Default::default()
    })
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_unpark(proxy::http::fast::worker_unparked)
        .build()
}

/// The command line; on a usage error, prints it (with switchboard's own hints) and exits 2.
fn parse_cli() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    Cli::try_parse_from(&args).unwrap_or_else(|mut e| {
        switchboard::hints::misplaced_run_flag(&Cli::command(), &mut e, &args);
        e.exit()
    })
}

fn main() -> ExitCode {
    #[cfg(not(feature = "system-alloc"))]
    {
        let _ = switchboard::run::RELEASE_FREE_MEMORY.set(mimalloc_collect);
        purge_at_once_until_started();
    }
    let cli = parse_cli();
    let result = match cli.command {
        Command::Run(args) => Config::resolve(*args).and_then(|cfg| {
            init_logging(&cfg.log);
            runtime()?.block_on(switchboard::run::run(cfg))
        }),
        Command::Demo { dir } => demo_args(&dir).and_then(|args| {
            let cfg = Config::resolve(args)?;
            init_logging(&cfg.log);
            runtime()?.block_on(async move {
                let backends = tokio::spawn(async move {
                    // Aborted when `run` returns, which owns the signal handling.
                    switchboard::demo::run_backends(&dir, std::future::pending()).await
                });
                let result = switchboard::run::run(cfg).await;
                backends.abort();
                result
            })
        }),
        Command::Check {
            dir,
            config,
            tables,
        } => switchboard::check::run(dir, config, tables),
        Command::Cleanup => {
            init_logging("info");
            match proxy::l4::nft_run::cleanup(&proxy::l4::NftConfig::default()) {
                Ok(true) => {
                    println!("removed nftables table inet switchboard");
                    Ok(())
                }
                Ok(false) => {
                    println!("no nftables table inet switchboard to remove");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::DemoBackends { dir } => {
            init_logging("info");
            runtime().map_err(Into::into).and_then(|rt| {
                rt.block_on(switchboard::demo::run_backends(
                    &dir,
                    switchboard::run::shutdown_signal(),
                ))
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
