//! Unit tests of the nft scripts in `nft.rs`: which elements a change touches, and the full table.

use super::*;

fn svc(ip: &str, p: Protocol, port: u16) -> Element {
    Element::Service {
        ip: ip.parse().unwrap(),
        protocol: p,
        port,
    }
}

fn t(v: Verdict) -> Target {
    Target::new(v, None)
}

#[test]
fn diff_touches_only_changed_elements() {
    let cfg = NftConfig::default();
    let none = ChainOps::default();
    let mut old = HashMap::new();
    old.insert(svc("10.96.0.1", Protocol::Tcp, 80), t(Verdict::Proxy));
    old.insert(svc("10.96.0.2", Protocol::Udp, 53), t(Verdict::Proxy));
    old.insert(svc("fd00::1", Protocol::Tcp, 80), t(Verdict::Proxy));
    let mut new = old.clone();
    assert_eq!(change_script(&cfg, &diff(&old, &new), &none), None);
    new.insert(svc("10.96.0.2", Protocol::Udp, 53), t(Verdict::Reject));
    new.remove(&svc("fd00::1", Protocol::Tcp, 80));
    new.insert(
        Element::NodePort {
            v6: false,
            protocol: Protocol::Tcp,
            port: 30080,
        },
        t(Verdict::Drop),
    );
    let chain = "svc-default/web/tcp/80/int4";
    let kernel = Target::new(Verdict::Kernel, Some(chain.into()));
    new.insert(svc("10.96.0.1", Protocol::Tcp, 80), kernel);
    let s = change_script(&cfg, &diff(&old, &new), &none).unwrap();
    let table = chain_table(&cfg, chain);
    let kernel_add =
        format!("add element inet {table} kernel4 {{ 10.96.0.1 . tcp . 80 : goto {chain} }}");
    let want = [
        // From the relay to the kernel (10.96.0.1): out of the filter map, into the nat map.
        "delete element inet switchboard services4 { 10.96.0.1 . tcp . 80, 10.96.0.2 . udp . 53 }",
        "delete element inet switchboard services6 { fd00::1 . tcp . 80 }",
        "add element inet switchboard services4 { 10.96.0.2 . udp . 53 : jump no-endpoints }",
        "add element inet switchboard nodeports4 { tcp . 30080 : jump no-local-endpoints }",
        &kernel_add,
    ];
    let missing: Vec<_> = want.iter().filter(|w| !s.contains(*w)).collect();
    assert!(missing.is_empty(), "missing {missing:#?} in\n{s}");
}

#[test]
fn full_script_replaces_the_table_in_one_go() {
    let mut e = HashMap::new();
    e.insert(svc("10.96.0.1", Protocol::Udp, 53), t(Verdict::Proxy));
    let rules = vec![Rule::Text(
        "meta l4proto tcp dnat ip to 10.0.0.1:80".to_string(),
    )];
    let kernel = KernelChains {
        chains: vec![("svc-a/b/tcp/80/int4".into(), rules.as_slice(), &[][..])],
        hairpin: vec!["10.0.0.1".parse().unwrap()],
        ..KernelChains::default()
    };
    let s = full_script(
        &NftConfig::default(),
        &Ports {
            tcp4: 1000,
            tcp6: Some(1001),
            udp4: 1002,
            udp6: None,
        },
        &e,
        &kernel,
    );
    assert!(s.starts_with("table inet switchboard {}\ndelete table inet switchboard\n"));
    let table = chain_table(&NftConfig::default(), "svc-a/b/tcp/80/int4");
    for want in [
        "redirect to :1000",
        "redirect to :1001",
        "tproxy ip to :1002",
        "10.96.0.1 . udp . 53 : jump udp-tproxy",
        &format!("add chain inet {table} svc-a/b/tcp/80/int4"),
        &format!(
            "add rule inet {table} svc-a/b/tcp/80/int4 meta l4proto tcp dnat ip to 10.0.0.1:80"
        ),
        "add element inet switchboard hairpin4 { 10.0.0.1 . 10.0.0.1 }",
    ] {
        assert!(s.contains(want), "{want} in\n{s}");
    }
    // Every service table is replaced in the same transaction, with its own nat hooks.
    for i in 0..service_tables::COUNT {
        let t = service_tables::name("switchboard", i);
        assert!(s.contains(&format!("table inet {t} {{}}\ndelete table inet {t}\n")));
    }
    assert_eq!(
        s.matches("jump kernel-services").count(),
        2 * service_tables::COUNT as usize
    );
    assert!(!s.contains("tproxy ip6"));
    assert!(s.contains(
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @kernel-nodeports4"
    ));

    // --nodeport-addresses: only those addresses, and no NodePorts of a family not named.
    let cfg = NftConfig {
        nodeport_addresses: vec!["10.250.0.0/16".parse().unwrap()],
        ..NftConfig::default()
    };
    let ports = Ports {
        tcp4: 1000,
        tcp6: None,
        udp4: 1002,
        udp6: None,
    };
    let s = full_script(&cfg, &ports, &e, &kernel);
    assert!(s.contains(
        "fib daddr type local ip daddr { 10.250.0.0/16 } meta l4proto . th dport vmap @kernel-nodeports4"
    ), "{s}");
    assert!(!s.contains("vmap @kernel-nodeports6"), "{s}");
    assert!(!s.contains("vmap @nodeports6"), "{s}");
}
