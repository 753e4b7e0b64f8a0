#!/usr/bin/env bash
# Builds switchboard's container images without a registry, and runs them once.
#
#   scripts/image.sh build   release binary, root filesystems from Debian packages (debootstrap),
#                            images committed with buildah (vfs storage) as
#                              $IMAGE_REGISTRY/switchboard:$IMAGE_TAG        nft, ip, conntrack: every role
#                              $IMAGE_REGISTRY/switchboard:$IMAGE_TAG-slim   neither: DNS and ingress roles
#   scripts/image.sh smoke   runs each committed image's root filesystem under unshare + chroot
#                            (podman run cannot run here: see docs/image.md): --version, then
#                            `switchboard run` as the image's non-root user on ports 53 and 80,
#                            /healthz, /readyz and one DNS answer; the full image also programs its
#                            nftables table with the image's own nft, as root
#   scripts/image.sh ci      build + smoke where the tools exist; otherwise says which one is missing
#                            and exits 0 (SWITCHBOARD_REQUIRE_IMAGE=1 makes that a failure)
#   scripts/image.sh export DIR   writes both images to DIR as OCI archives (for `podman load`,
#                            `skopeo copy oci-archive:… docker://…`, `ctr image import`)
#
# The same recipe as ./Dockerfile: the runtime there is debian:bookworm-slim, itself a
# debootstrap --variant=minbase root filesystem with docs and caches removed, which is what this
# script makes. Needs root, a Debian 12 host (the binary is built here and links this glibc), and
# the packages scripts/setup.sh installs (buildah, debootstrap, libcap2-bin, curl, dnsutils).
#
# Environment: IMAGE_REGISTRY (default ghcr.io/switchboard; deploy/base/kustomization.yaml names
# the same), IMAGE_TAG (default: the version in Cargo.toml), DEBIAN_MIRROR (default: the first
# Debian mirror in apt's sources), SWITCHBOARD_BINARY (use this binary instead of building one),
# IMAGE_WORK (scratch directory, default /var/tmp/switchboard-image; removed after a build).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE_REGISTRY=${IMAGE_REGISTRY:-ghcr.io/switchboard}
IMAGE_TAG=${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
IMAGE=$IMAGE_REGISTRY/switchboard:$IMAGE_TAG
SLIM=$IMAGE-slim
SUITE=bookworm
WORK=${IMAGE_WORK:-/var/tmp/switchboard-image}
# The image's non-root user (distroless's "nonroot" numbers).
UID_NONROOT=65532
# Every buildah call uses vfs: no overlay or fuse needed (facts in docs/image.md).
bah() { buildah --storage-driver vfs "$@"; }
log() { echo "image: $*" >&2; }

missing_tools() {
    local tool missing=()
    [ "$(id -u)" = 0 ] || missing+=("root (uid $(id -u))")
    for tool in buildah debootstrap unshare chroot setcap getcap strip curl dig cargo; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    echo "${missing[*]}"
}

mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local m
    m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null |
        grep -v security | sed -E 's/^URIs: *//; s/^deb (\[[^]]*\] )?//' | awk '{print $1}' | head -1)
    echo "${m:-http://deb.debian.org/debian}"
}

# A root filesystem in $1: Debian minbase plus the packages in $2 (comma separated), slimmed as
# debian:*-slim is, with the binary and the non-root user.
rootfs() {
    local dir=$1 include=$2 binary=$3
    local args=(--variant=minbase --cache-dir="$WORK/debs")
    [ -n "$include" ] && args+=(--include="$include")
    debootstrap "${args[@]}" "$SUITE" "$dir" "$(mirror)" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log" >&2; return 1; }
    rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
        "$dir"/usr/share/locale/* "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/* \
        "$dir"/var/log/* "$dir"/var/cache/debconf/*-old "$dir"/etc/machine-id
    # The container runtime provides these.
    rm -f "$dir"/etc/resolv.conf "$dir"/etc/hostname
    echo "switchboard:x:$UID_NONROOT:$UID_NONROOT:switchboard:/nonexistent:/usr/sbin/nologin" >>"$dir"/etc/passwd
    echo "switchboard:x:$UID_NONROOT:" >>"$dir"/etc/group
    install -m 0755 "$binary" "$dir"/usr/bin/switchboard
    # The release profile keeps line tables (162 MB); the image keeps symbols, not those (32 MB).
    strip --strip-debug "$dir"/usr/bin/switchboard
    # Ports 53 and 80 as the non-root user; the pod must keep NET_BIND_SERVICE in its bounding
    # set (capabilities.add), or exec fails with "operation not permitted".
    setcap cap_net_bind_service=+ep "$dir"/usr/bin/switchboard
}

# Commits the directory $1 as image $2 (one layer, from scratch).
commit() {
    local dir=$1 name=$2 ctr mnt
    ctr=$(bah from scratch)
    mnt=$(bah mount "$ctr")
    # cp -a keeps owners, modes and xattrs (the file capability above).
    cp -a "$dir"/. "$mnt"/
    bah umount "$ctr" >/dev/null
    bah config \
        --entrypoint '["/usr/bin/switchboard"]' --cmd run \
        --user "$UID_NONROOT:$UID_NONROOT" --workingdir / \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --port 53/udp --port 53/tcp --port 80/tcp --port 9154/tcp \
        --label org.opencontainers.image.title=switchboard \
        --label org.opencontainers.image.version="$IMAGE_TAG" \
        --label org.opencontainers.image.licenses=Apache-2.0 \
        "$ctr"
    bah commit --quiet --rm "$ctr" "$name" >/dev/null
    log "committed $name ($(du -sh "$dir" | cut -f1) unpacked)"
}

build() {
    local start binary
    start=$(date +%s)
    binary=${SWITCHBOARD_BINARY:-}
    if [ -z "$binary" ]; then
        log "building the release binary"
        cargo build --release --locked --bin switchboard >&2
        binary=${CARGO_TARGET_DIR:-target}/release/switchboard
    fi
    log "binary $binary: $("$binary" --version)"
    rm -rf "$WORK"
    mkdir -p "$WORK/debs"
    local t=$(date +%s)
    # ca-certificates: the HTTP proxy (pingora) loads the system CA bundle at start and panics
    # without it, even with no TLS upstream.
    rootfs "$WORK/full" ca-certificates,nftables,iproute2,conntrack "$binary"
    rootfs "$WORK/slim" ca-certificates "$binary"
    log "root filesystems in $(($(date +%s) - t)) s (debootstrap from $(mirror))"
    commit "$WORK/full" "$IMAGE"
    commit "$WORK/slim" "$SLIM"
    rm -rf "$WORK"
    # Earlier builds' images, untagged by these commits.
    bah rmi --prune >/dev/null 2>&1 || true
    log "built $IMAGE and $SLIM in $(($(date +%s) - start)) s"
}

# Polls `$@` (a command) every 0.1 s until it succeeds, for at most $1 seconds.
poll() {
    local limit=$1 i
    shift
    for ((i = 0; i < limit * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    "$@" >/dev/null
}

# Runs inside a new network, mount and PID namespace (see smoke_image): $1 the image's root,
# $2 whether the image has nft. Everything started here dies with the namespace's PID 1.
smoke_inside() {
    local root=$1 kernel=$2 pid
    ip link set lo up
    mount -t proc proc "$root/proc"
    mount -t tmpfs tmpfs "$root/tmp"
    mkdir "$root/tmp/demo"
    mount --bind examples/demo "$root/tmp/demo"

    # The image's default user, privileged ports: the file capability must have survived.
    chroot --userspec=$UID_NONROOT:$UID_NONROOT "$root" /usr/bin/switchboard run \
        --manifests /tmp/demo --dns 127.0.0.1:53 --http 127.0.0.1:80 --admin 127.0.0.1:9154 \
        >"$root/tmp/run.log" 2>&1 &
    pid=$!
    poll 20 curl -fsS http://127.0.0.1:9154/healthz || { cat "$root/tmp/run.log" >&2; return 1; }
    poll 20 curl -fsS http://127.0.0.1:9154/readyz || { cat "$root/tmp/run.log" >&2; return 1; }
    local answer
    answer=$(dig +short +time=2 +tries=3 @127.0.0.1 web.default.svc.cluster.local A)
    [ "$answer" = 127.10.0.1 ] || { log "DNS answered '$answer', want 127.10.0.1"; cat "$root/tmp/run.log" >&2; return 1; }
    log "  as uid $UID_NONROOT: /healthz ok, /readyz ok, web.default.svc.cluster.local A $answer"
    kill -TERM "$pid"
    wait "$pid" || { log "run exited with $?"; cat "$root/tmp/run.log" >&2; return 1; }

    if [ "$kernel" = yes ]; then
        chroot "$root" /usr/bin/switchboard run --manifests /tmp/demo --l4 nftables \
            --node-name demo-node --admin 127.0.0.1:9154 --cleanup-on-exit >"$root/tmp/l4.log" 2>&1 &
        pid=$!
        poll 20 curl -fsS http://127.0.0.1:9154/readyz || { cat "$root/tmp/l4.log" >&2; return 1; }
        poll 20 chroot "$root" nft list table inet switchboard-svc0 || { cat "$root/tmp/l4.log" >&2; return 1; }
        log "  as root, --l4 nftables: tables inet switchboard and switchboard-svc0..15 programmed with the image's nft ($(chroot "$root" nft --version))"
        kill -TERM "$pid"
        wait "$pid" || { log "run exited with $?"; cat "$root/tmp/l4.log" >&2; return 1; }
    fi
}

smoke_image() {
    local name=$1 kernel=$2 ctr root rc=0
    ctr=$(bah from --pull-never "$name")
    root=$(bah mount "$ctr")
    log "$name: $(chroot "$root" /usr/bin/switchboard --version)"
    getcap "$root/usr/bin/switchboard" | grep -q cap_net_bind_service ||
        { log "$name: /usr/bin/switchboard lost its file capability"; rc=1; }
    for tool in nft ip conntrack; do
        if [ "$kernel" = yes ] && ! chroot "$root" sh -c "command -v $tool" >/dev/null; then
            log "$name: no $tool"; rc=1
        elif [ "$kernel" = no ] && chroot "$root" sh -c "command -v $tool" >/dev/null; then
            log "$name: $tool should not be in the slim image"; rc=1
        fi
    done
    if [ $rc = 0 ]; then
        # --kill-child: nothing outlives the check, whatever happens in it.
        unshare --net --mount --pid --fork --kill-child --propagation private \
            bash -c "$(declare -f log poll smoke_inside); UID_NONROOT=$UID_NONROOT; set -euo pipefail; smoke_inside '$root' $kernel" ||
            rc=1
    fi
    bah umount "$ctr" >/dev/null || true
    bah rm "$ctr" >/dev/null || true
    return $rc
}

smoke() {
    local start=$(date +%s)
    smoke_image "$IMAGE" yes
    smoke_image "$SLIM" no
    log "smoke passed for $IMAGE and $SLIM in $(($(date +%s) - start)) s"
}

case "${1:-}" in
build) build ;;
smoke) smoke ;;
ci)
    missing=$(missing_tools)
    if [ -n "$missing" ]; then
        log "NOT BUILT: missing $missing (scripts/setup.sh installs the packages)"
        [ "${SWITCHBOARD_REQUIRE_IMAGE:-}" = 1 ] && exit 1
        exit 0
    fi
    build
    smoke
    ;;
export)
    dir=${2:?usage: scripts/image.sh export DIR}
    mkdir -p "$dir"
    bah push --quiet "$IMAGE" "oci-archive:$dir/switchboard-$IMAGE_TAG.tar:$IMAGE"
    bah push --quiet "$SLIM" "oci-archive:$dir/switchboard-$IMAGE_TAG-slim.tar:$SLIM"
    log "wrote $dir/switchboard-$IMAGE_TAG.tar and $dir/switchboard-$IMAGE_TAG-slim.tar"
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
