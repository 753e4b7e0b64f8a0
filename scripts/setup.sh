#!/usr/bin/env bash
# Installs the system packages switchboard's build and tests use, if any is missing:
#   cmake      pingora's zlib-ng build
#   dnsutils   dig, for the DNS tests
#   iproute2   ip netns / veth, for the network-namespace tests
#   nftables   nft, for the kube-proxy (L4) tests
#   conntrack  conntrack, which the L4 kernel path uses to delete stale UDP entries
#   curl       HTTP tests (with HTTP/2 support, checked) and the README's examples
#   promtool   (package prometheus) parses the alerts' and dashboard's PromQL (tests/observability.rs)
#   buildah, debootstrap, setcap (libcap2-bin), strip (binutils)
#              scripts/image.sh: the container images built and run once without a registry
# Debian/Ubuntu. Runs apt-get as root, or through sudo.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v dig >/dev/null || need+=(dnsutils)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v curl >/dev/null || need+=(curl)
command -v promtool >/dev/null || need+=(prometheus)
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v setcap >/dev/null || need+=(libcap2-bin)
command -v strip >/dev/null || need+=(binutils)

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    echo "installing: ${need[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The HTTP tests speak HTTP/2 through curl: a curl built without it fails them obscurely.
if ! curl -V | grep -qw HTTP2; then
    echo "setup: this curl has no HTTP/2 support (curl -V lists no HTTP2 feature); the HTTP tests need it" >&2
    exit 1
fi
