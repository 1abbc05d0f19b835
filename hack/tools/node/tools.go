//go:build tools

// Package tools pins the node runtime hack/build-node-tools.sh builds for the real-kubelet
// prototype (hack/realnode): containerd v2, its runc shim and ctr. Test tooling only; never
// compiled.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
