//! The cost of an nftables update at 10,000 services (root only): switchboard in a node
//! namespace with 10,000 ClusterIP services on the kernel path, then one service changes. Each
//! change is one transaction (one sync) of a handful of commands — the changed map elements
//! and at most that service's chain, never the other 10,000 — carried by netlink unless it
//! declares a shard map (then `nft -f`); its time is read from
//! `switchboard_l4_sync_duration_seconds` and printed (not asserted: speed belongs in benchmarks).

mod netns;

use std::time::{Duration, Instant};

use netns::*;

const SERVICES: usize = 10_000;

fn sync_stats(node: &Node, ns: &Netns) -> (f64, f64) {
    (
        node.metric(Some(ns), "switchboard_l4_sync_duration_seconds_sum"),
        node.metric(Some(ns), "switchboard_l4_sync_duration_seconds_count"),
    )
}

/// The `commands` and `via` of the last `l4: synced` debug line: how many nft commands (or
/// netlink messages) its one transaction held, and which of the two carried it.
fn last_sync(node: &Node) -> (usize, String) {
    let log = node.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("l4: synced"))
        .unwrap_or_default();
    let field = |name: &str| {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    };
    (
        field("commands").parse().unwrap_or(usize::MAX),
        field("via"),
    )
}

#[test]
fn needs_root_one_service_update_at_10k_services_is_fast() {
    if skip_unless_root("needs_root_one_service_update_at_10k_services_is_fast") {
        return;
    }
    let ns = Netns::new("scale");
    let dir = tempfile::tempdir().unwrap();
    for file in 0..10 {
        let mut text = String::new();
        for i in file * SERVICES / 10..(file + 1) * SERVICES / 10 {
            let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
            let ep = format!("10.244.{}.{}", i / 250, i % 250 + 1);
            text.push_str(&service_yaml(
                &format!("s{i}"),
                &ip,
                "",
                &[],
                &[("t", "TCP", 80, 8080, None)],
                &[Ep::ready(ep)],
            ));
            text.push_str("---\n");
        }
        write_manifest(dir.path(), &format!("bulk{file}.yaml"), &text);
    }
    let probe = |eps: &[Ep]| {
        service_yaml(
            "probe",
            "10.97.0.1",
            "",
            &[],
            &[("t", "TCP", 80, 8080, None)],
            eps,
        )
    };
    write_manifest(dir.path(), "probe.yaml", &probe(&[]));
    let start = Instant::now();
    let node = Node::start(
        Some(&ns),
        &[
            "--manifests",
            dir.path().to_str().unwrap(),
            "--l4",
            "nftables",
        ],
    );
    // Polling the metric, not /debug/tables: a 10k-service dump per poll would dominate.
    let deadline = Instant::now() + Duration::from_secs(180);
    while node.metric(Some(&ns), "switchboard_l4_frontends") < (SERVICES + 1) as f64 {
        assert!(
            Instant::now() < deadline,
            "10k services never programmed:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (sum0, count0) = sync_stats(&node, &ns);
    eprintln!(
        "10k services: up and programmed in {:?}; {count0} syncs took {sum0:.3}s in all",
        start.elapsed()
    );

    // Each round: the probe's endpoints, and what the update must be carried by. One endpoint
    // is a plain DNAT; two or more a pick in a shard map, where replacing an endpoint changes
    // only map elements and changing their number also rewrites the chain. All of it goes over
    // netlink but the declaration of a shard map no pick used before (the first pick here:
    // the 10,000 services have one endpoint each), which is `nft`'s.
    let rounds: [(&[&str], &str); 8] = [
        (&["10.244.200.1"], "netlink"),
        (&[], "netlink"),
        (&["10.244.200.1"], "netlink"),
        (&["10.244.200.1", "10.244.200.2"], "nft"),
        (&["10.244.200.1", "10.244.200.3"], "netlink"),
        (&["10.244.200.4", "10.244.200.3"], "netlink"),
        (&["10.244.200.4", "10.244.200.3", "10.244.200.5"], "netlink"),
        (&["10.244.200.4", "10.244.200.5"], "netlink"),
    ];
    let mut worst = 0.0f64;
    for (round, (ips, carrier)) in rounds.iter().enumerate() {
        let (sum, count) = sync_stats(&node, &ns);
        let eps: Vec<Ep> = ips.iter().map(|ip| Ep::ready(*ip)).collect();
        write_manifest(dir.path(), "probe.yaml", &probe(&eps));
        // With endpoints: DNAT in the kernel, through the probe's own chain; without: reject.
        let (table, map, want) = if ips.is_empty() {
            ("switchboard".to_string(), "services4", "jump no-endpoints")
        } else {
            let chain = "svc-default/probe/tcp/80/int4";
            (
                chain_table(chain),
                "kernel4",
                "goto svc-default/probe/tcp/80/int4",
            )
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (ok, out) = ns.try_exec(&[
                "nft",
                "get",
                "element",
                "inet",
                &table,
                map,
                "{ 10.97.0.1 . tcp . 80 }",
            ]);
            let picked = ips.len() < 2 || {
                let pick = chain_pick(&ns, "svc-default/probe/tcp/80/int4")
                    .map(|(_, _, elements)| elements)
                    .unwrap_or_default();
                ips.iter().all(|ip| pick.contains(&format!("{ip} . 8080")))
            };
            if ok && out.contains(want) && picked {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: probe never became {want} with {ips:?}: {out}\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The sync that made the change is counted once its transaction is in.
        while sync_stats(&node, &ns).1 <= count {
            assert!(Instant::now() < deadline, "sync never counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (sum1, count1) = sync_stats(&node, &ns);
        // Only the changed elements and the probe's chain: a few commands, in one transaction,
        // carried by netlink when no chain changes.
        let (commands, via) = last_sync(&node);
        assert!(
            (1..=8).contains(&commands) && via == *carrier,
            "round {round}: the sync ran {commands} commands via {via:?}, not via {carrier}:\n{}",
            node.log()
        );
        let per = (sum1 - sum) / (count1 - count).max(1.0);
        eprintln!(
            "round {round}: {} sync(s), {:.1} ms each",
            count1 - count,
            per * 1000.0
        );
        worst = worst.max(per);
    }
    // No update failed and fell back to a full table (a netlink batch the kernel refused would).
    assert!(
        !node.log().contains("applying the tables failed"),
        "{}",
        node.log()
    );
    // Timing is reported, not asserted: speed is measured in benchmarks (docs/benchmarks.md),
    // never as a pass/fail bound in tests.
    eprintln!(
        "l4 one-service update at 10,000 services: worst {:.1} ms per sync",
        worst * 1000.0
    );
}
