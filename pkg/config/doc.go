// Package config holds kproxy's internal, validated configuration and the pure
// functions that produce it from upstream's KubeProxyConfiguration
// (kubeproxy.config.k8s.io/v1alpha1).
//
// The data flow mirrors upstream kube-proxy so that existing config files and
// command lines keep working unchanged:
//
//	file bytes --LoadFile/Decode--> v1alpha1 (defaulted) + unknown/duplicate fields as a warning
//	flags      --pkg/app--------->  v1alpha1 (defaulted, then overwritten by flags)
//	v1alpha1   --FromV1Alpha1---->  *Config + field.ErrorList
//
// Nothing in this package reads flags, talks to the API server or touches the
// kernel; LoadFile is the only function that does I/O, and only to read the
// named file. Everything else is a pure function of its arguments, which is
// what lets the tests cover every rule with small tables.
//
// Deliberate differences from upstream:
//
//   - Only the iptables proxy mode is accepted; "ipvs" and "nftables" are
//     rejected with an error instead of starting a proxier kproxy does not have.
//   - Feature gate names are not checked against upstream's list (kproxy does
//     not vendor it); any name is accepted and kept for later use.
package config
