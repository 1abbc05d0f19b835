//go:build tools

// Package tools pins the commands hack/build-tools.sh builds for the e2e cluster (and the
// kubelet, kube-scheduler, kubeadm and kubectl hack/build-node-tools.sh builds for
// hack/realnode), so that `go mod tidy` keeps every module they need in go.mod and go.sum.
// It is never compiled.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
