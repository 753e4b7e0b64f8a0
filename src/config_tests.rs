//! Unit tests of `config.rs`: flags, the config file and how they resolve.

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
fn dns_udp_workers_flag_file_and_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "dns-udp-workers = 3\n").unwrap();
    let resolve = |flag: Option<usize>| {
        Config::resolve(RunArgs {
            config: Some(path.clone()),
            manifests: Some(dir.path().into()),
            dns_udp_workers: flag,
            ..Default::default()
        })
    };
    assert_eq!(resolve(None).unwrap().dns_udp_workers, 3);
    assert_eq!(resolve(Some(1)).unwrap().dns_udp_workers, 1);
    let e = resolve(Some(0)).unwrap_err();
    assert!(format!("{e:#}").contains("dns-udp-workers"), "{e:#}");
}

#[test]
fn dns_tcp_limits_flags_file_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "dns-tcp-max-per-client = 8\ndns-tcp-idle-timeout = \"3s\"\n",
    )
    .unwrap();
    let resolve = |file: bool, f: fn(&mut RunArgs)| {
        let mut args = RunArgs {
            config: file.then(|| path.clone()),
            manifests: Some(dir.path().into()),
            ..Default::default()
        };
        f(&mut args);
        Config::resolve(args)
    };
    let secs = std::time::Duration::from_secs;
    type SetArgs = fn(&mut RunArgs);
    // (file?, flags, max connections, per client, idle, write)
    type Case = (bool, SetArgs, usize, usize, u64, u64);
    let cases: [Case; 4] = [
        (false, |_| {}, 1000, 64, 10, 10),
        (true, |_| {}, 1000, 8, 3, 10),
        (
            true,
            |a| {
                a.dns_tcp_max_per_client = Some(0);
                a.dns_tcp_max_connections = Some(50);
                a.dns_tcp_write_timeout = Some("2s".into());
            },
            50,
            0,
            3,
            2,
        ),
        (
            false,
            |a| a.dns_tcp_idle_timeout = Some("1m".into()),
            1000,
            64,
            60,
            10,
        ),
    ];
    for (i, (file, f, max, per, idle, write)) in cases.into_iter().enumerate() {
        let c = resolve(file, f).unwrap();
        assert_eq!(
            (
                c.dns_tcp_max_connections,
                c.dns_tcp_max_per_client,
                c.dns_tcp_idle_timeout,
                c.dns_tcp_write_timeout
            ),
            (max, per, secs(idle), secs(write)),
            "case {i}"
        );
    }
    let bad: [(SetArgs, &str); 3] = [
        (
            |a| a.dns_tcp_max_connections = Some(0),
            "dns-tcp-max-connections",
        ),
        (
            |a| a.dns_tcp_idle_timeout = Some("0s".into()),
            "dns-tcp-idle-timeout",
        ),
        (
            |a| a.dns_tcp_write_timeout = Some("soon".into()),
            "dns-tcp-write-timeout",
        ),
    ];
    for (f, name) in bad {
        let e = resolve(false, f).unwrap_err();
        assert!(format!("{e:#}").contains(name), "{e:#}");
    }
}

#[test]
fn http_workers_flag_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "http-workers = 2\n").unwrap();
    let resolve = |config: Option<PathBuf>, flag: Option<usize>| {
        Config::resolve(RunArgs {
            config,
            manifests: Some(dir.path().into()),
            http_workers: flag,
            ..Default::default()
        })
        .unwrap()
        .http_workers
    };
    assert_eq!(resolve(None, None), default_http_workers());
    assert_eq!(resolve(Some(path.clone()), None), 2);
    assert_eq!(resolve(Some(path), Some(1)), 1);
}

#[test]
fn http_limits_flags_file_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "http-header-timeout = \"2s\"\nhttp-max-connections = 800\nhttp-write-timeout = \"1500ms\"\n",
    )
    .unwrap();
    let resolve = |args: RunArgs| {
        Config::resolve(RunArgs {
            manifests: Some(dir.path().into()),
            ..args
        })
    };
    let d = resolve(RunArgs::default()).unwrap().http_limits;
    assert_eq!(d.header_timeout, std::time::Duration::from_secs(10));
    assert_eq!(d.max_header_bytes, 32 * 1024);
    assert_eq!(
        (d.max_connections, d.max_connections_per_client),
        (10_000, 1250)
    );
    let l = resolve(RunArgs {
        config: Some(path.clone()),
        http_header_timeout: Some("500ms".into()),
        ..Default::default()
    })
    .unwrap()
    .http_limits;
    assert_eq!(l.header_timeout, std::time::Duration::from_millis(500));
    assert_eq!(l.write_timeout, std::time::Duration::from_millis(1500));
    assert_eq!(
        (l.max_connections, l.max_connections_per_client),
        (800, 100)
    );
    let e = resolve(RunArgs {
        http_idle_timeout: Some("0s".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("http-idle-timeout"), "{e:#}");
}

#[test]
fn resolv_conf() {
    let ns = resolv_conf_nameservers(
        "# x\nsearch a b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\n",
    );
    assert_eq!(
        ns,
        vec![
            "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
            "[fe80::1]:53".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap()
        ]
    );
}
