package gen

import (
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Value pickers. Each draws from the whole space the apiserver accepts, with the edges
// (length limits, port 1 and 65535, /0 ranges) and the common real-world values weighted up.

const (
	alnum     = "abcdefghijklmnopqrstuvwxyz0123456789"
	labelChar = alnum + "-"
)

// label returns a random DNS-1123 label of length n (1..63): alphanumerics, with dashes
// (possibly consecutive) inside.
func (g *generator) label(n int) string {
	var b strings.Builder
	for i := range n {
		set := labelChar
		if i == 0 || i == n-1 {
			set = alnum
		}
		b.WriteByte(set[g.r.IntN(len(set))])
	}
	return b.String()
}

var serviceWords = []string{
	"web", "api", "frontend", "backend", "db", "cache", "redis", "kafka", "grpc-gateway",
	"auth", "payments", "search", "metrics", "dns", "ingress", "admin", "worker", "queue",
}

// serviceName returns a DNS-1123 label for a Service: real-looking names, random ones of any
// length 1..63, the two extreme lengths and names that start with a digit (allowed since
// RelaxedServiceNameValidation).
func (g *generator) serviceName() string {
	switch x := g.r.Float64(); {
	case x < 0.40:
		name := pick(g.r, serviceWords)
		if g.chance(0.5) {
			name += "-" + g.label(1+g.r.IntN(6))
		}
		return name
	case x < 0.60:
		return g.label(1 + g.r.IntN(63))
	case x < 0.78:
		return "s" + g.label(62)
	case x < 0.86:
		return g.label(1)
	default:
		return fmt.Sprint(g.r.IntN(10)) + g.label(1+g.r.IntN(20))
	}
}

// Port names seen in the wild, chosen for the edges they exercise: a long one with dashes
// (cert-manager), a double dash, single characters, digits first.
var portNames = []string{
	"tcp-prometheus-servicemonitor", "grpc--web", "http", "https", "metrics", "dns",
	"dns-tcp", "grpc", "http2", "status-port", "web", "a", "z", "7", "80", "p-1",
}

// portName returns a DNS-1123 label not in used.
func (g *generator) portName(used map[string]bool) string {
	for {
		var name string
		switch x := g.r.Float64(); {
		case x < 0.45:
			name = pick(g.r, portNames)
		case x < 0.60:
			name = "p" + g.label(62)
		default:
			name = g.label(1 + g.r.IntN(63))
		}
		if !used[name] {
			return name
		}
	}
}

var commonPorts = []int32{80, 443, 53, 8080, 8443, 9090, 9153, 3000, 6379, 5432, 15021, 9402}
var edgePorts = []int32{1, 2, 1023, 1024, 30000, 32767, 32768, 65534, 65535}

// portNumber returns a port 1..65535.
func (g *generator) portNumber() int32 {
	switch x := g.r.Float64(); {
	case x < 0.30:
		return pick(g.r, commonPorts)
	case x < 0.40:
		return pick(g.r, edgePorts)
	default:
		return 1 + g.r.Int32N(65535)
	}
}

func (g *generator) protocol() v1.Protocol {
	switch x := g.r.Float64(); {
	case x < 0.70:
		return v1.ProtocolTCP
	case x < 0.88:
		return v1.ProtocolUDP
	default:
		return v1.ProtocolSCTP
	}
}

// targetPort returns a Service targetPort and the number the slices then carry: the port
// itself, unset (the apiserver defaults it to the port), another number, or a name (an
// IANA service name; kube-proxy never resolves it, the slices carry a number).
func (g *generator) targetPort(port int32) (intstr.IntOrString, int32) {
	switch x := g.r.Float64(); {
	case x < 0.45:
		return intstr.FromInt32(port), port
	case x < 0.55:
		return intstr.IntOrString{}, port
	case x < 0.80:
		n := 1 + g.r.Int32N(65535)
		return intstr.FromInt32(n), n
	default:
		return intstr.FromString(g.ianaName()), 1 + g.r.Int32N(65535)
	}
}

// ianaName returns a valid IANA_SVC_NAME: 1..15 lowercase alphanumerics and single
// dashes, at least one letter, no dash at either end.
func (g *generator) ianaName() string {
	n := 1 + g.r.IntN(15)
	b := []byte(g.label(n))
	for i := 1; i < n; i++ {
		if b[i] == '-' && b[i-1] == '-' {
			b[i] = 'x'
		}
	}
	b[0] = "abcdefghijklmnopqrstuvwxyz"[g.r.IntN(26)]
	return string(b)
}

// staticNodePort returns an unused node port from the static band at the start of the
// default range (30000-30085), or 0 when the band is used up.
func (g *generator) staticNodePort() int32 {
	for range 20 {
		p := 30000 + g.r.Int32N(86)
		if !g.nodePorts[p] {
			g.nodePorts[p] = true
			return p
		}
	}
	return 0
}

// externalIP returns an address for externalIPs or a load-balancer ingress: documentation
// ranges of both families, sometimes an IPv6 address in non-canonical text (accepted by
// these legacy fields), sometimes one already handed out (shared between Services).
func (g *generator) externalIP(v6 bool) string {
	if len(g.extIPs) > 0 && g.chance(0.15) {
		ip := pick(g.r, g.extIPs)
		if strings.Contains(ip, ":") == v6 {
			return ip
		}
	}
	var ip string
	if v6 {
		ip = fmt.Sprintf("2001:db8::%x", 1+g.r.IntN(0xfffe))
		switch x := g.r.Float64(); {
		case x < 0.08:
			ip = strings.ToUpper(ip)
		case x < 0.16:
			ip = fmt.Sprintf("2001:0db8:0000:0000::%x", 1+g.r.IntN(0xfffe))
		}
	} else {
		prefix := pick(g.r, []string{"192.0.2", "198.51.100", "203.0.113"})
		ip = fmt.Sprintf("%s.%d", prefix, 1+g.r.IntN(254))
	}
	g.extIPs = append(g.extIPs, ip)
	return ip
}

// Source ranges: /0 of both families, overlapping pairs (10.0.0.0/8 and 10.1.0.0/16),
// single hosts, and non-canonical IPv6 text. All have no bits set past the prefix.
var sourceRanges4 = []string{
	"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "192.0.2.128/25",
	"198.51.100.7/32", "203.0.113.0/24", "172.16.0.0/12",
}
var sourceRanges6 = []string{
	"::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8::1/128", "2001:DB8:2::/48",
	"fd00::/8",
}

func (g *generator) sourceRange(v6 bool) string {
	if g.chance(0.6) {
		if v6 {
			return pick(g.r, sourceRanges6)
		}
		return pick(g.r, sourceRanges4)
	}
	var addr netip.Addr
	bits := 0
	if v6 {
		var b [16]byte
		for i := range b {
			b[i] = byte(g.r.IntN(256))
		}
		addr, bits = netip.AddrFrom16(b), g.r.IntN(129)
	} else {
		addr, bits = netip.AddrFrom4([4]byte{byte(g.r.IntN(256)), byte(g.r.IntN(256)),
			byte(g.r.IntN(256)), byte(g.r.IntN(256))}), g.r.IntN(33)
	}
	return netip.PrefixFrom(addr, bits).Masked().String()
}

// newEndpointIP returns an unused pod address: 10.244.0.0/16 or fd00:10:244::/64.
func (g *generator) newEndpointIP(v6 bool) string {
	for {
		var a netip.Addr
		if v6 {
			b := netip.MustParseAddr("fd00:10:244::").As16()
			b[12], b[13], b[14], b[15] = byte(g.r.IntN(256)), byte(g.r.IntN(256)),
				byte(g.r.IntN(256)), byte(1+g.r.IntN(255))
			a = netip.AddrFrom16(b)
		} else {
			a = netip.AddrFrom4([4]byte{10, 244, byte(g.r.IntN(256)), byte(1 + g.r.IntN(254))})
		}
		if _, taken := g.eps[a.String()]; !taken {
			return a.String()
		}
	}
}
