//! Running `nft` and `ip`: applying scripts, the policy routing that UDP tproxy needs, removing
//! switchboard's tables at exit, and reading the reject counters. The scripts themselves are
//! written in `nft.rs`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::nft::{NftConfig, NftError};
use super::service_tables;

/// Whether the table exists (left by an earlier run, say).
pub fn table_exists(cfg: &NftConfig) -> bool {
    run("nft", &["list", "tables", "inet"], None).is_ok_and(|out| {
        out.lines()
            .any(|l| l.trim() == format!("table inet {}", cfg.table))
    })
}

/// Runs `nft -f -` with `script` as one transaction.
pub fn apply(script: &str) -> Result<(), NftError> {
    run("nft", &["-f", "-"], Some(script)).map(|_| ())
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let name = format!("{cmd} {}", args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            cmd: name.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NftError::Spawn {
                cmd: name.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NftError::Spawn {
        cmd: name.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.len() > 2000 {
            stderr.truncate(2000);
            stderr.push_str("...");
        }
        Err(NftError::Failed { cmd: name, stderr })
    }
}

fn fwmark(cfg: &NftConfig) -> String {
    format!("{:#x}/{:#x}", cfg.tproxy_mark, cfg.tproxy_mark)
}

fn remove_rules(cfg: &NftConfig, family: &str) {
    let (mark, table) = (fwmark(cfg), cfg.route_table.to_string());
    for _ in 0..16 {
        if run(
            "ip",
            &[family, "rule", "del", "fwmark", &mark, "lookup", &table],
            None,
        )
        .is_err()
        {
            break;
        }
    }
    let _ = run("ip", &[family, "route", "flush", "table", &table], None);
}

/// Installs the policy routing tproxy needs: packets with the tproxy mark are delivered locally
/// (`ip rule fwmark T lookup TABLE`, `local default dev lo table TABLE`), per family. IPv6
/// failures are returned separately, so a node without IPv6 still serves IPv4.
pub fn install_routing(cfg: &NftConfig) -> (Result<(), NftError>, Result<(), NftError>) {
    let mut results = Vec::new();
    for (family, default) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        remove_rules(cfg, family);
        let (mark, table) = (fwmark(cfg), cfg.route_table.to_string());
        let r = run(
            "ip",
            &[family, "rule", "add", "fwmark", &mark, "lookup", &table],
            None,
        )
        .and_then(|_| {
            run(
                "ip",
                &[
                    family, "route", "replace", "local", default, "dev", "lo", "table", &table,
                ],
                None,
            )
        })
        .map(|_| ());
        results.push(r);
    }
    let v6 = results.pop().expect("two families");
    let v4 = results.pop().expect("two families");
    (v4, v6)
}

/// Removes the table, the service tables and the policy routing; `Ok(true)` if the main table
/// existed. Touches nothing else.
pub fn cleanup(cfg: &NftConfig) -> Result<bool, NftError> {
    let listed = run("nft", &["list", "tables", "inet"], None).unwrap_or_default();
    let ours: Vec<String> = std::iter::once(cfg.table.clone())
        .chain(service_tables::names(&cfg.table))
        .filter(|t| {
            listed
                .lines()
                .any(|l| l.trim() == format!("table inet {t}"))
        })
        .collect();
    let existed = ours.first() == Some(&cfg.table);
    if !ours.is_empty() {
        let script: String = ours
            .iter()
            .map(|t| format!("delete table inet {t}\n"))
            .collect();
        apply(&script)?;
    }
    remove_rules(cfg, "-4");
    remove_rules(cfg, "-6");
    Ok(existed)
}

/// Packets counted by the `no-endpoints` counters of the table and the service tables (one
/// `nft list counters`, every table's).
pub fn rejected_packets(cfg: &NftConfig) -> Option<u64> {
    let out = run("nft", &["list", "counters"], None).ok()?;
    count_packets(&out, cfg)
}

/// The sum of the `no-endpoints` counters of our tables in an `nft list counters` listing;
/// `None` when the main table has none.
fn count_packets(listing: &str, cfg: &NftConfig) -> Option<u64> {
    let main = format!("table inet {} {{", cfg.table);
    let service = format!("table inet {}-svc", cfg.table);
    let (mut ours, mut in_counter, mut found) = (false, false, false);
    let mut total = 0u64;
    for line in listing.lines().map(str::trim) {
        if line.starts_with("table ") {
            ours = line == main || (line.starts_with(&service) && line.ends_with('{'));
            in_counter = false;
        } else if line == "counter no-endpoints {" {
            in_counter = ours;
        } else if in_counter && line.starts_with("packets ") {
            let n: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            total += n;
            found = true;
            in_counter = false;
        }
    }
    found.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_packets_sum_the_counters_of_our_tables_only() {
        let listing =
            "table inet switchboard {\n\tcounter no-endpoints {\n\t\tpackets 3 bytes 180\n\t}\n}\n\
    table inet other {\n\tcounter no-endpoints {\n\t\tpackets 100 bytes 1\n\t}\n}\n\
    table inet switchboard-svc4 {\n\tcounter no-endpoints {\n\t\tpackets 2 bytes 120\n\t}\n}\n";
        let cfg = NftConfig::default();
        assert_eq!(count_packets(listing, &cfg), Some(5));
        assert_eq!(count_packets("table inet other {\n}\n", &cfg), None);
    }
}
