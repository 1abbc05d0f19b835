# kproxy image: a static Go binary on Debian with both iptables backends, so the backend
# the host already uses (legacy or nft) can be picked at start (--iptables-backend=auto).
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
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kproxy /usr/local/bin/kproxy
ENTRYPOINT ["/usr/local/bin/kproxy"]
