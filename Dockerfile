# kproxy's image, for machines with a Docker engine: the same recipe as hack/image.sh (make
# image), which builds it without one. A static Go binary on Debian bookworm with both
# iptables backends, kmod and conntrack; /usr/local/bin/kube-proxy is kproxy, so a kube-proxy
# DaemonSet's command works unchanged; `iptables` in the container follows the node's
# backend (hack/image/iptables-wrapper).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd cmd
COPY pkg pkg
COPY hack/version-ldflags.sh hack/
# The build context has no .git: the version comes in as a build argument.
ARG KPROXY_VERSION
RUN CGO_ENABLED=0 go build -trimpath -ldflags "$(KPROXY_VERSION=$KPROXY_VERSION hack/version-ldflags.sh)" -o /out/kproxy ./cmd/kproxy

FROM debian:bookworm-slim
COPY hack/image/iptables-wrapper /usr/sbin/iptables-wrapper
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables kmod conntrack \
 && rm -rf /var/lib/apt/lists/* \
 && for f in iptables ip6tables; do \
      update-alternatives --install /usr/sbin/$f $f /usr/sbin/iptables-wrapper 100 \
        --slave /usr/sbin/$f-save $f-save /usr/sbin/iptables-wrapper \
        --slave /usr/sbin/$f-restore $f-restore /usr/sbin/iptables-wrapper; \
    done
COPY --from=build /out/kproxy /usr/local/bin/kproxy
RUN ln -s kproxy /usr/local/bin/kube-proxy
ARG KPROXY_VERSION
LABEL org.opencontainers.image.title=kproxy org.opencontainers.image.version=$KPROXY_VERSION \
      org.opencontainers.image.source=https://github.com/kproxy-dev/kproxy
ENTRYPOINT ["/usr/local/bin/kproxy"]
