# switchboard's image, two targets from one build:
#
#   docker build -t ghcr.io/switchboard/switchboard:0.1.0 .                      # every role
#   docker build --target slim -t ghcr.io/switchboard/switchboard:0.1.0-slim .   # DNS, ingress
#
# The default (last) target carries nft, ip and conntrack, which `--l4 nftables` (the kube-proxy
# role) runs; the slim one has neither. Both run as the non-root user 65532 unless the pod says
# otherwise, with the binary allowed to bind ports below 1024 (file capability
# cap_net_bind_service): the pod must keep NET_BIND_SERVICE (capabilities.add) or exec fails.
# The kube-proxy role runs as root with NET_ADMIN (deploy/variants/kube-proxy, deploy/README.md).
#
# scripts/image.sh builds the same images without Docker or a registry (debootstrap + buildah)
# and is what CI runs; docs/image.md says why and what was measured.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchboard \
 && install -m 0755 target/release/switchboard /switchboard \
 && strip --strip-debug /switchboard \
 && setcap cap_net_bind_service=+ep /switchboard

FROM debian:bookworm-slim AS slim
# ca-certificates: the HTTP proxy (pingora) loads the system CA bundle at start.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN echo 'switchboard:x:65532:65532:switchboard:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'switchboard:x:65532:' >> /etc/group
COPY --from=build /switchboard /usr/bin/switchboard
USER 65532:65532
EXPOSE 53/udp 53/tcp 80/tcp 9154/tcp
ENTRYPOINT ["/usr/bin/switchboard"]
CMD ["run"]

FROM slim AS full
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 conntrack \
 && rm -rf /var/lib/apt/lists/*
USER 65532:65532
