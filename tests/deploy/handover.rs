//! The hand-overs of deploy/README.md, run against a model of a cluster: kube-dns never
//! loses its last ready endpoint.

use super::*;

/// A pod in the model of a cluster: who owns it, its labels, whether it is ready, whether it
/// answers DNS.
struct Pod {
    owner: String,
    labels: BTreeMap<String, String>,
    ready: bool,
    serves_dns: bool,
}

/// Runs the kubectl commands of a shell block of deploy/README.md against a model of a cluster
/// that starts with CoreDNS's two ready pods: `apply -k` adds the variant's pods (not ready),
/// `rollout status` waits until they are ready, `scale`/`delete` of the CoreDNS Deployment takes
/// its pods away, reads change nothing. After every command, kube-dns (kubeadm's selector) must
/// have a ready endpoint, and every endpoint must answer DNS. Returns the final endpoints' owners.
fn hand_over(block: &str) -> Option<BTreeSet<String>> {
    let kube_dns = BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]);
    let coredns = || Pod {
        owner: "deployment/coredns".into(),
        labels: kube_dns.clone(),
        ready: true,
        serves_dns: true,
    };
    let mut pods = vec![coredns(), coredns()];
    let mut ran = 0;
    for line in block.lines() {
        let line = line.split('#').next().unwrap().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"kubectl") {
            continue;
        }
        ran += 1;
        let words: Vec<&str> = words
            .iter()
            .copied()
            .skip(1)
            .filter(|w| *w != "-n" && *w != "kube-system")
            .collect();
        match words.as_slice() {
            ["get" | "logs", ..] => {}
            ["apply", "-k", dir] => {
                let dir = dir.strip_prefix("deploy/").expect("a deploy/ directory");
                let w = workload(&typed(kustomize(dir)?));
                let serves_dns = !switchboard::config::parse_file_config(&w.config)
                    .unwrap()
                    .dns
                    .unwrap_or_default()
                    .is_empty();
                for _ in 0..3 {
                    pods.push(Pod {
                        owner: w.id.clone(),
                        labels: w.labels.clone(),
                        ready: false,
                        serves_dns,
                    });
                }
            }
            ["rollout", "status", id] => {
                let mut found = false;
                for p in pods.iter_mut().filter(|p| p.owner == *id) {
                    p.ready = true;
                    found = true;
                }
                assert!(found, "`{line}`: no pods of {id} in the model");
            }
            ["scale", "deployment/coredns", "--replicas=0"] | ["delete", "deployment/coredns"] => {
                pods.retain(|p| p.owner != "deployment/coredns")
            }
            ["delete", "daemonset/kube-proxy"] => {}
            _ => panic!("`{line}`: the hand-over model does not know this command"),
        }
        let endpoints: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.ready && selects(&kube_dns, &p.labels))
            .collect();
        assert!(
            !endpoints.is_empty(),
            "after `{line}` kube-dns has no ready endpoint"
        );
        assert!(
            endpoints.iter().all(|p| p.serves_dns),
            "after `{line}` kube-dns sends queries to a pod that does not serve DNS"
        );
    }
    assert!(ran >= 3, "too few kubectl commands in:\n{block}");
    Some(
        pods.iter()
            .filter(|p| p.ready && selects(&kube_dns, &p.labels))
            .map(|p| p.owner.clone())
            .collect(),
    )
}

/// The first ```sh block after the heading `## HEADING` in deploy/README.md.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo_dir("deploy/README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?} in deploy/README.md"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no sh block in {heading:?}"));
    block.split("```").next().unwrap().to_string()
}

#[test]
fn hand_over_from_coredns_keeps_kube_dns_answering() {
    let block = readme_block("Hand-over from CoreDNS");
    let Some(end) = hand_over(&block) else {
        return;
    };
    assert_eq!(
        end,
        BTreeSet::from(["deployment/switchboard-dns".to_string()])
    );
}

#[test]
fn hand_over_from_kube_proxy_keeps_kube_dns_answering() {
    let block = readme_block("Hand-over from kube-proxy");
    assert!(block.contains("deploy/variants/kube-proxy"), "{block}");
    let Some(end) = hand_over(&block) else {
        return;
    };
    assert_eq!(end, BTreeSet::from(["deployment/coredns".to_string()]));
    // The all variant in its place, then CoreDNS scaled down as the README says.
    let all = block.replace("deploy/variants/kube-proxy", "deploy/variants/all")
        + "kubectl -n kube-system scale deployment/coredns --replicas=0\n";
    let end = hand_over(&all).unwrap();
    assert_eq!(end, BTreeSet::from(["daemonset/switchboard".to_string()]));
}
