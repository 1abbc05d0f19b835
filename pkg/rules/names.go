package rules

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

	"github.com/kproxy-dev/kproxy/pkg/model"
)

// Chains whose names and roles are fixed. They are shared with upstream kube-proxy, so a
// node switching between the two keeps the same chains and loses no connection.
const (
	ChainServices         = "KUBE-SERVICES"
	ChainExternalServices = "KUBE-EXTERNAL-SERVICES"
	ChainNodePorts        = "KUBE-NODEPORTS"
	ChainPostrouting      = "KUBE-POSTROUTING"
	ChainMarkMasq         = "KUBE-MARK-MASQ"
	ChainForward          = "KUBE-FORWARD"
	ChainProxyFirewall    = "KUBE-PROXY-FIREWALL"
	// ChainFirewall is shared with kubelet: written by us, never deleted by us.
	ChainFirewall = "KUBE-FIREWALL"
)

// Prefixes of the per-service and per-endpoint nat chains. Any nat chain with one of these
// prefixes is ours (or upstream's, which is the same thing for a drop-in), and is deleted
// once no service renders it.
const (
	prefixService         = "KUBE-SVC-"
	prefixServiceLocal    = "KUBE-SVL-"
	prefixExternal        = "KUBE-EXT-"
	prefixFirewall        = "KUBE-FW-"
	prefixServiceEndpoint = "KUBE-SEP-"
)

// IsOwnedServiceChain reports whether a nat chain name is a per-service or per-endpoint
// chain that kproxy (or upstream kube-proxy) creates and may therefore delete.
func IsOwnedServiceChain(chain string) bool {
	for _, p := range []string{prefixService, prefixServiceLocal, prefixExternal, prefixFirewall, prefixServiceEndpoint} {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

// portHash is the 16-character suffix shared by a service port's SVC, SVL, EXT and FW
// chains: base32(sha256(portName + protocol)), byte-identical to upstream's.
func portHash(name model.ServicePortName) string {
	return hashSuffix("", name, "")
}

// hashSuffix returns prefix + the first 16 base32 characters of sha256(portName +
// lower-case protocol + endpoint), building the input and the name without temporary
// strings: rendering a large cluster hashes every endpoint.
func hashSuffix(prefix string, name model.ServicePortName, endpoint string) string {
	var in [256]byte
	b := append(in[:0], name.Namespace...)
	b = append(b, '/')
	b = append(b, name.Name...)
	if name.Port != "" {
		b = append(b, ':')
		b = append(b, name.Port...)
	}
	for _, c := range []byte(name.Protocol) {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	b = append(b, endpoint...)
	sum := sha256.Sum256(b)
	var enc [56]byte
	base32.StdEncoding.Encode(enc[:], sum[:])
	out := make([]byte, 0, len(prefix)+16)
	out = append(out, prefix...)
	out = append(out, enc[:16]...)
	return string(out)
}

// ServiceChain is the cluster-policy dispatch chain of a service port.
func ServiceChain(name model.ServicePortName) string { return prefixService + portHash(name) }

// ExternalChain is the entry chain for traffic arriving through a node port.
func ExternalChain(name model.ServicePortName) string { return prefixExternal + portHash(name) }

// EndpointChain is the DNAT chain of one endpoint of a service port. The endpoint string
// is "ip:port" ("[ip]:port" for IPv6) with the endpoint's (target) port.
func EndpointChain(name model.ServicePortName, endpoint string) string {
	return hashSuffix(prefixServiceEndpoint, name, endpoint)
}
