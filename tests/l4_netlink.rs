//! The netlink path of element-only updates (root only): the same update, applied once through
//! `nft -f` (the script `change_script` writes) and once as switchboard's netlink batch, leaves
//! the same table, for every kind of element: verdicts (jump and goto) in the service and
//! NodePort maps of both families, endpoint picks of both families, hairpin pairs — added,
//! then deleted. A key or data layout that differs from nft's would show here as a different
//! listing or as a delete that finds nothing.

mod netns;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use netns::*;
use proxy::l4::kernel::ChainOps;
use proxy::l4::nft::{self, Change, Element, KernelChains, NftConfig, Ports, Target};
use proxy::l4::pick::{self, MapId, PickElement, Slot};
use proxy::l4::rule::{DnatTo, Prefix, Rule};
use proxy::l4::select::Verdict;
use proxy::l4::{netlink_full, netlink_update};
use tables::Protocol;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Applies an nft script inside `ns`, failing the test with nft's answer and the script.
fn nft_apply(ns: &Netns, script: &str) {
    let (ok, out) = ns.try_exec(&["sh", "-c", &format!("nft -f - <<'EOF'\n{script}EOF")]);
    assert!(ok, "nft: {out}\n{script}");
}

/// The lines of `a` that `b` does not have (for messages).
fn only_in(a: &str, b: &str) -> Vec<String> {
    a.lines()
        .filter(|l| !b.lines().any(|m| m == *l))
        .map(String::from)
        .collect()
}

/// Two shard maps in `chain`'s service table (a chain's picks live in its table).
fn pick_maps(chain: &str) -> [MapId; 2] {
    [
        MapId {
            v6: false,
            protocol: Protocol::Tcp,
            shard: pick::shard_of(chain, 0),
        },
        MapId {
            v6: true,
            protocol: Protocol::Udp,
            shard: pick::shard_of(chain, 1),
        },
    ]
}

/// Changes of every kind: `add` true gives the additions, false the matching deletions.
fn changes(add: bool) -> (Vec<Change>, ChainOps) {
    let chain: Arc<str> = "svc-default/web/tcp/80/int4".into();
    let targets = [
        (
            Element::Service {
                ip: ip("10.96.0.10"),
                protocol: Protocol::Tcp,
                port: 80,
            },
            Target::new(Verdict::Kernel, Some(chain.clone())),
        ),
        (
            Element::Service {
                ip: ip("fd00::10"),
                protocol: Protocol::Udp,
                port: 53,
            },
            Target::new(Verdict::Proxy, None),
        ),
        (
            Element::Service {
                ip: ip("10.96.0.11"),
                protocol: Protocol::Udp,
                port: 5353,
            },
            Target::new(Verdict::Reject, None),
        ),
        (
            Element::NodePort {
                v6: false,
                protocol: Protocol::Tcp,
                port: 30080,
            },
            Target::new(Verdict::Drop, None),
        ),
        (
            Element::NodePort {
                v6: true,
                protocol: Protocol::Tcp,
                port: 30081,
            },
            Target::new(Verdict::Proxy, None),
        ),
    ];
    let changes = targets
        .into_iter()
        .map(|(element, t)| Change {
            element,
            old: (!add).then(|| t.clone()),
            new: add.then_some(t),
        })
        .collect();
    let [tcp4, udp6] = pick_maps(&chain);
    let picks = vec![
        PickElement {
            map: tcp4,
            key: 70_000,
            addr: "10.244.1.5:8080".parse().unwrap(),
        },
        PickElement {
            map: udp6,
            key: 1,
            addr: "[fd00:244::5]:53".parse().unwrap(),
        },
    ];
    let hairpin = vec![ip("10.244.1.5"), ip("fd00:244::5")];
    let mut ops = ChainOps::default();
    if add {
        ops.pick_add = picks;
        ops.hairpin_add = hairpin;
    } else {
        ops.pick_delete = picks;
        ops.hairpin_delete = hairpin;
    }
    (changes, ops)
}

#[test]
fn needs_root_netlink_updates_leave_the_table_nft_would() {
    if skip_unless_root("needs_root_netlink_updates_leave_the_table_nft_would") {
        return;
    }
    let ns = Netns::new("nl");
    let cfg = NftConfig {
        table: "sbnltest".into(),
        ..NftConfig::default()
    };
    let rules = vec![Rule::Dnat {
        prefix: None,
        protocol: Protocol::Tcp,
        v6: false,
        to: DnatTo::Addr("10.244.1.5:8080".parse().unwrap()),
    }];
    let kernel = KernelChains {
        chains: vec![(
            "svc-default/web/tcp/80/int4".into(),
            rules.as_slice(),
            &[][..],
        )],
        pick_maps: pick_maps("svc-default/web/tcp/80/int4").to_vec(),
        ..KernelChains::default()
    };
    let ports = Ports {
        tcp4: 1000,
        tcp6: Some(1001),
        udp4: 1002,
        udp6: Some(1003),
    };
    let fresh = || {
        nft_apply(
            &ns,
            &nft::full_script(&cfg, &ports, &HashMap::new(), &kernel),
        )
    };
    // The table and its service tables: everything in this namespace.
    let list = || ns.exec(&["nft", "list", "ruleset"]);
    let via_nft = |changes: &[Change], ops: &ChainOps| {
        nft_apply(
            &ns,
            &nft::change_script(&cfg, changes, ops).expect("a script"),
        );
    };
    let via_netlink = |changes: &[Change], ops: &ChainOps| {
        let batch = netlink_update::batch(&cfg, changes, ops).expect("element-only");
        ns.enter(move || batch.commit()).expect("netlink commit");
    };

    let (added, add_ops) = changes(true);
    let (deleted, delete_ops) = changes(false);
    fresh();
    let empty = list();
    via_nft(&added, &add_ops);
    let want = list();
    assert_ne!(want, empty);
    fresh();
    via_netlink(&added, &add_ops);
    assert_eq!(list(), want, "netlink added something else than nft");
    // Byte for byte the same keys (padding included, which listings do not show): nft deletes
    // what netlink added, and netlink what nft added.
    via_nft(&deleted, &delete_ops);
    assert_eq!(list(), empty, "nft left elements netlink added");
    via_nft(&added, &add_ops);
    via_netlink(&deleted, &delete_ops);
    assert_eq!(list(), empty, "netlink left elements nft added");
    // A failed delete fails the whole transaction: nothing of it is applied.
    via_nft(&added, &add_ops);
    let mut missing = deleted.clone();
    missing.push(Change {
        element: Element::Service {
            ip: ip("10.96.9.9"),
            protocol: Protocol::Tcp,
            port: 1,
        },
        old: Some(Target::new(Verdict::Reject, None)),
        new: None,
    });
    let batch = netlink_update::batch(&cfg, &missing, &delete_ops).expect("element-only");
    let err = ns
        .enter(move || batch.commit())
        .expect_err("deleting a missing element");
    assert_eq!(err.raw_os_error(), Some(2), "{err}");
    assert_eq!(list(), want, "a failed transaction changed the table");
    ns.exec(&["nft", "flush", "ruleset"]);
}

/// Chains with every rule shape netlink writes: the same kernel expressions as nft's.
#[test]
fn needs_root_netlink_rules_are_the_expressions_nft_writes() {
    if skip_unless_root("needs_root_netlink_rules_are_the_expressions_nft_writes") {
        return;
    }
    let ns = Netns::new("nlr");
    let cfg = NftConfig {
        table: "sbnlrules".into(),
        ..NftConfig::default()
    };
    let chain: Arc<str> = "svc-default/x/tcp/80/int4".into();
    let [tcp4, udp6] = pick_maps(&chain);
    let kernel = KernelChains {
        pick_maps: vec![tcp4, udp6],
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/48".parse().unwrap(),
        ],
        ..KernelChains::default()
    };
    let ports = Ports {
        tcp4: 1000,
        tcp6: None,
        udp4: 1002,
        udp6: None,
    };
    let slot = |map, offset, capacity| Slot {
        map,
        offset,
        capacity,
    };
    let short_circuit = |prefix| Rule::Dnat {
        prefix: Some(prefix),
        protocol: Protocol::Tcp,
        v6: false,
        to: DnatTo::Slot {
            slot: slot(tcp4, 64, 4),
            n: 3,
        },
    };
    let rules = vec![
        Rule::Mark {
            unless_from: Some((false, "cluster-cidrs4".into())),
            mark: 0x20_0000,
        },
        Rule::Mark {
            unless_from: Some((true, "cluster-cidrs6".into())),
            mark: 0x20_0000,
        },
        Rule::Mark {
            unless_from: None,
            mark: 0x20_0000,
        },
        Rule::Dnat {
            prefix: None,
            protocol: Protocol::Tcp,
            v6: false,
            to: DnatTo::Addr("10.244.1.5:8080".parse().unwrap()),
        },
        Rule::Dnat {
            prefix: None,
            protocol: Protocol::Udp,
            v6: true,
            to: DnatTo::Addr("[fd00:244::5]:53".parse().unwrap()),
        },
        Rule::Dnat {
            prefix: None,
            protocol: Protocol::Tcp,
            v6: false,
            to: DnatTo::Slot {
                slot: slot(tcp4, 64, 4),
                n: 3,
            },
        },
        Rule::Dnat {
            prefix: None,
            protocol: Protocol::Udp,
            v6: true,
            to: DnatTo::Slot {
                slot: slot(udp6, 0, 2),
                n: 2,
            },
        },
        // The Local short-circuit's two halves, and its drop for everyone else.
        short_circuit(Prefix::NodeSource { mark: 0x20_0000 }),
        short_circuit(Prefix::FromSet {
            v6: false,
            set: "cluster-cidrs4".into(),
        }),
        Rule::Dnat {
            prefix: Some(Prefix::FromSet {
                v6: true,
                set: "cluster-cidrs6".into(),
            }),
            protocol: Protocol::Udp,
            v6: true,
            to: DnatTo::Addr("[fd00:244::5]:53".parse().unwrap()),
        },
        Rule::Jump("no-local-endpoints".into()),
    ];
    assert!(rules.iter().all(Rule::encodable));
    let add = ChainOps {
        add: vec![chain.clone()],
        rewrite: vec![(chain.clone(), rules)],
        ..ChainOps::default()
    };
    let delete = ChainOps {
        delete: vec![chain.clone()],
        ..ChainOps::default()
    };
    let fresh = || {
        nft_apply(
            &ns,
            &nft::full_script(&cfg, &ports, &HashMap::new(), &kernel),
        )
    };
    // The kernel's own listing of the rules, expression by expression.
    let list = || {
        ns.exec(&["nft", "--debug=netlink", "list", "ruleset"])
            .lines()
            .filter(|l| !l.contains("handle"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    fresh();
    let empty = list();
    nft_apply(&ns, &nft::change_script(&cfg, &[], &add).expect("a script"));
    let want = list();
    assert!(
        want.contains("numgen reg 1 = random mod 3 offset 64"),
        "{want}"
    );
    fresh();
    let batch = netlink_update::batch(&cfg, &[], &add).expect("encodable");
    ns.enter(move || batch.commit()).expect("netlink commit");
    let got = list();
    assert!(
        got == want,
        "netlink wrote other expressions than nft: netlink only {:#?}, nft only {:#?}",
        only_in(&got, &want),
        only_in(&want, &got)
    );
    let batch = netlink_update::batch(&cfg, &[], &delete).expect("encodable");
    ns.enter(move || batch.commit()).expect("netlink commit");
    assert_eq!(list(), empty, "netlink left the chain behind");
    ns.exec(&["nft", "flush", "ruleset"]);
}

/// The whole table over netlink (`netlink_full`) is the table `nft -f` of `full_script` makes:
/// the same listing (declarations, nft's `typeof` and byte orders included), the same kernel
/// expressions in every chain, and element keys byte for byte (nft deletes what netlink added)
/// — with and without the IPv6 listeners, over an empty namespace and over a loaded table.
#[test]
fn needs_root_full_table_over_netlink_is_the_table_nft_makes() {
    if skip_unless_root("needs_root_full_table_over_netlink_is_the_table_nft_makes") {
        return;
    }
    let ns = Netns::new("nlf");
    let cfg = NftConfig {
        table: "sbnlfull".into(),
        ..NftConfig::default()
    };
    // Each chain's picks in its own service table.
    let (web_chain, other_chain, lb_chain) = (
        "svc-default/web/tcp/80/int4",
        "svc-default/other/udp/53/ext4",
        "svc-default/lb/tcp/443/ext6",
    );
    let maps: Vec<MapId> = [
        (web_chain, false, Protocol::Tcp),
        (other_chain, false, Protocol::Udp),
        (other_chain, true, Protocol::Tcp),
        (other_chain, true, Protocol::Udp),
        (lb_chain, true, Protocol::Tcp),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (chain, v6, protocol))| MapId {
        v6,
        protocol,
        shard: pick::shard_of(chain, i),
    })
    .collect();
    let slot = |map: MapId, n| DnatTo::Slot {
        slot: Slot {
            map,
            offset: 8,
            capacity: 4,
        },
        n,
    };
    let dnat = |protocol, v6, to| Rule::Dnat {
        prefix: None,
        protocol,
        v6,
        to,
    };
    let web = vec![
        Rule::Mark {
            unless_from: Some((false, "cluster-cidrs4".into())),
            mark: 0x20_0000,
        },
        dnat(Protocol::Tcp, false, slot(maps[0], 3)),
    ];
    let others = vec![
        Rule::Mark {
            unless_from: Some((true, "cluster-cidrs6".into())),
            mark: 0x20_0000,
        },
        dnat(Protocol::Udp, false, slot(maps[1], 2)),
        dnat(Protocol::Tcp, true, slot(maps[2], 4)),
        dnat(Protocol::Udp, true, slot(maps[3], 1)),
        dnat(
            Protocol::Tcp,
            false,
            DnatTo::Addr("10.244.1.5:8080".parse().unwrap()),
        ),
    ];
    // An external Local policy's chain: the short-circuit for the node and pods, then drop.
    let local = vec![
        Rule::Dnat {
            prefix: Some(Prefix::NodeSource { mark: 0x20_0000 }),
            protocol: Protocol::Tcp,
            v6: true,
            to: slot(maps[4], 4),
        },
        Rule::Dnat {
            prefix: Some(Prefix::FromSet {
                v6: true,
                set: "cluster-cidrs6".into(),
            }),
            protocol: Protocol::Tcp,
            v6: true,
            to: slot(maps[4], 4),
        },
        Rule::Jump("no-local-endpoints".into()),
    ];
    let picks: Vec<PickElement> = maps
        .iter()
        .zip([
            "10.244.1.5:8080",
            "10.244.1.6:53",
            "[fd00:244::5]:80",
            "[fd00:244::6]:53",
            "[fd00:244::7]:443",
        ])
        .flat_map(|(map, addr)| {
            (8..11).map(move |key| PickElement {
                map: *map,
                key,
                addr: addr.parse().unwrap(),
            })
        })
        .collect();
    let (added, ops) = changes(true);
    let elements: HashMap<Element, Target> = added
        .iter()
        .map(|c| (c.element, c.new.clone().unwrap()))
        .collect();
    let kernel = KernelChains {
        chains: vec![
            (web_chain.into(), web.as_slice(), &[][..]),
            (other_chain.into(), others.as_slice(), &[][..]),
            (lb_chain.into(), local.as_slice(), &[][..]),
        ],
        hairpin: ops.hairpin_add.clone(),
        pick_maps: maps.clone(),
        picks,
        cluster_cidrs: ["10.244.0.0/16", "10.96.0.0/12", "fd00:244::/48"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect(),
    };
    let list = |debug: bool| {
        let mut args = vec!["nft"];
        if debug {
            args.push("--debug=netlink");
        }
        args.extend(["list", "ruleset"]);
        // Rule handles count every rule the table ever had. The expression listing is
        // compared as sorted lines (a hash set lists its elements in insertion order); the
        // plain listing keeps rule order.
        let out = ns.exec(&args);
        let mut lines: Vec<&str> = out.lines().filter(|l| !l.contains("handle")).collect();
        if debug {
            lines.sort();
        }
        lines.join("\n")
    };
    let with_v6 = Ports {
        tcp4: 1000,
        tcp6: Some(1001),
        udp4: 1002,
        udp6: Some(1003),
    };
    let v4_only = Ports {
        tcp6: None,
        udp6: None,
        ..with_v6
    };
    for ports in [with_v6, v4_only] {
        nft_apply(&ns, &nft::full_script(&cfg, &ports, &elements, &kernel));
        let want = (list(false), list(true));
        for over in ["a loaded table", "an empty namespace"] {
            if over == "an empty namespace" {
                ns.exec(&["nft", "flush", "ruleset"]);
            }
            let batch =
                netlink_full::full_batch(&cfg, &ports, &elements, &kernel).expect("encodable");
            ns.enter(move || batch.commit())
                .unwrap_or_else(|e| panic!("netlink full table over {over}: {e}"));
            let got = (list(false), list(true));
            assert!(
                got.0 == want.0,
                "over {over}, {ports:?}: the listings differ: netlink only {:#?}, nft only {:#?}",
                only_in(&got.0, &want.0),
                only_in(&want.0, &got.0)
            );
            assert!(
                got.1 == want.1,
                "over {over}, {ports:?}: the expressions differ: netlink only {:#?}, nft only {:#?}",
                only_in(&got.1, &want.1),
                only_in(&want.1, &got.1)
            );
        }
        // nft finds and deletes each element netlink added: the same bytes.
        let (deleted, mut delete_ops) = changes(false);
        delete_ops.pick_delete = kernel.picks.clone();
        nft_apply(
            &ns,
            &nft::change_script(&cfg, &deleted, &delete_ops).expect("a script"),
        );
    }
    // Without an encoding for every part, the table goes to nft.
    let ranged = NftConfig {
        nodeport_addresses: vec!["10.0.0.0/8".parse().unwrap()],
        ..cfg.clone()
    };
    assert!(netlink_full::full_batch(&ranged, &v4_only, &elements, &kernel).is_none());
    let text = vec![Rule::Text("jump no-local-endpoints".into())];
    let with_text = KernelChains {
        chains: vec![("svc-x".into(), text.as_slice(), &[][..])],
        ..KernelChains::default()
    };
    assert!(netlink_full::full_batch(&cfg, &v4_only, &HashMap::new(), &with_text).is_none());
    ns.exec(&["nft", "flush", "ruleset"]);
}

#[test]
fn structural_updates_stay_with_nft() {
    let (changes, mut ops) = changes(true);
    let cfg = NftConfig::default();
    assert!(netlink_update::batch(&cfg, &changes, &ops).is_some());
    ops.rewrite.push((
        "svc-x".into(),
        vec![Rule::Text("jump no-local-endpoints".into())],
    ));
    assert!(netlink_update::batch(&cfg, &changes, &ops).is_none());
    ops.rewrite.clear();
    ops.pick_maps = pick_maps("svc-default/web/tcp/80/int4").to_vec();
    assert!(netlink_update::batch(&cfg, &changes, &ops).is_none());
}
