package conntrack

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
)

// entry builds a netlink entry as a dump would hand it over.
func entry(proto uint8, origSrc, origDst, replySrc, replyDst string, zone uint16) *netlink.ConntrackFlow {
	tuple := func(src, dst string) netlink.IPTuple {
		s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
		return netlink.IPTuple{
			Protocol: proto,
			SrcIP:    net.IP(s.Addr().AsSlice()), SrcPort: s.Port(),
			DstIP: net.IP(d.Addr().AsSlice()), DstPort: d.Port(),
		}
	}
	return &netlink.ConntrackFlow{
		Forward: tuple(origSrc, origDst),
		Reverse: tuple(replySrc, replyDst),
		Zone:    zone,
	}
}

func TestFromNetlink(t *testing.T) {
	v4 := entry(protoUDP, "10.0.0.99:40000", "172.30.0.10:53", "10.240.0.4:5353", "10.0.0.99:40000", 0)
	// The same entry with 16-byte (IPv4-in-IPv6) addresses, which net.IP
	// allows: it must give the same Flow.
	v4in16 := *v4
	v4in16.Forward.SrcIP = v4.Forward.SrcIP.To16()
	v4in16.Forward.DstIP = v4.Forward.DstIP.To16()
	v4in16.Reverse.SrcIP = v4.Reverse.SrcIP.To16()
	v4in16.Reverse.DstIP = v4.Reverse.DstIP.To16()
	wantV4 := Flow{
		Protocol: v1.ProtocolUDP,
		OrigSrc:  netip.MustParseAddrPort("10.0.0.99:40000"),
		OrigDst:  netip.MustParseAddrPort("172.30.0.10:53"),
		ReplySrc: netip.MustParseAddrPort("10.240.0.4:5353"),
		ReplyDst: netip.MustParseAddrPort("10.0.0.99:40000"),
	}

	tests := []struct {
		name   string
		in     *netlink.ConntrackFlow
		want   Flow
		wantOK bool
	}{
		{name: "ipv4 udp", in: v4, want: wantV4, wantOK: true},
		{name: "ipv4 in 16 bytes", in: &v4in16, want: wantV4, wantOK: true},
		{
			name: "ipv6 udp in a zone",
			in:   entry(protoUDP, "[2001:db8::9]:40000", "[fd00:10:96::a]:53", "[fd00:10:244::4]:5353", "[2001:db8::9]:40000", 3),
			want: Flow{
				Protocol: v1.ProtocolUDP,
				OrigSrc:  netip.MustParseAddrPort("[2001:db8::9]:40000"),
				OrigDst:  netip.MustParseAddrPort("[fd00:10:96::a]:53"),
				ReplySrc: netip.MustParseAddrPort("[fd00:10:244::4]:5353"),
				ReplyDst: netip.MustParseAddrPort("[2001:db8::9]:40000"),
				Zone:     3,
			},
			wantOK: true,
		},
		{
			name: "tcp",
			in:   entry(protoTCP, "10.0.0.1:1", "10.0.0.2:2", "10.0.0.2:2", "10.0.0.1:1", 0),
			want: Flow{
				Protocol: v1.ProtocolTCP,
				OrigSrc:  netip.MustParseAddrPort("10.0.0.1:1"), OrigDst: netip.MustParseAddrPort("10.0.0.2:2"),
				ReplySrc: netip.MustParseAddrPort("10.0.0.2:2"), ReplyDst: netip.MustParseAddrPort("10.0.0.1:1"),
			},
			wantOK: true,
		},
		{name: "icmp is not representable", in: entry(1, "10.0.0.1:0", "10.0.0.2:0", "10.0.0.2:0", "10.0.0.1:0", 0)},
		{name: "missing address", in: &netlink.ConntrackFlow{Forward: netlink.IPTuple{Protocol: protoUDP}, Reverse: netlink.IPTuple{Protocol: protoUDP}}},
		{name: "nil", in: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := fromNetlink(tt.in)
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("fromNetlink = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestFlowFilterMatchesExactly(t *testing.T) {
	e := entry(protoUDP, "10.0.0.99:40000", "172.30.0.10:53", "10.240.0.4:5353", "10.0.0.99:40000", 0)
	f, ok := fromNetlink(e)
	if !ok {
		t.Fatal("fromNetlink failed")
	}
	filter := flowFilter{f: {}}
	if !filter.MatchConntrackFlow(e) {
		t.Errorf("filter does not match the entry it was built from: %s", f)
	}

	// Each differs from e in one field only, and must not match.
	others := map[string]*netlink.ConntrackFlow{
		"orig src port": entry(protoUDP, "10.0.0.99:40001", "172.30.0.10:53", "10.240.0.4:5353", "10.0.0.99:40001", 0),
		"orig dst":      entry(protoUDP, "10.0.0.99:40000", "172.30.0.11:53", "10.240.0.4:5353", "10.0.0.99:40000", 0),
		"reply src":     entry(protoUDP, "10.0.0.99:40000", "172.30.0.10:53", "10.240.0.5:5353", "10.0.0.99:40000", 0),
		"reply dst":     entry(protoUDP, "10.0.0.99:40000", "172.30.0.10:53", "10.240.0.4:5353", "10.244.0.1:40000", 0),
		"protocol":      entry(protoTCP, "10.0.0.99:40000", "172.30.0.10:53", "10.240.0.4:5353", "10.0.0.99:40000", 0),
		"zone":          entry(protoUDP, "10.0.0.99:40000", "172.30.0.10:53", "10.240.0.4:5353", "10.0.0.99:40000", 1),
	}
	for name, o := range others {
		if filter.MatchConntrackFlow(o) {
			t.Errorf("filter matches an entry with another %s", name)
		}
	}
	if filter.MatchConntrackFlow(entry(1, "10.0.0.1:0", "10.0.0.2:0", "10.0.0.2:0", "10.0.0.1:0", 0)) {
		t.Error("filter matches an ICMP entry")
	}
}

func TestNetlinkUnsupportedFamily(t *testing.T) {
	ct := NewNetlink("IPv5")
	ctx := context.Background()
	if _, err := ct.ListUDP(ctx); err == nil || !strings.Contains(err.Error(), "IPv5") {
		t.Errorf("ListUDP = %v, want an unsupported family error", err)
	}
	if _, err := ct.Delete(ctx, []Flow{{}}); err == nil {
		t.Error("Delete succeeded for an unsupported family")
	}
}

func TestFlowString(t *testing.T) {
	f := Flow{
		Protocol: v1.ProtocolUDP,
		OrigSrc:  netip.MustParseAddrPort("10.0.0.99:40000"),
		OrigDst:  netip.MustParseAddrPort("172.30.0.10:53"),
		ReplySrc: netip.MustParseAddrPort("10.240.0.4:5353"),
		ReplyDst: netip.MustParseAddrPort("10.0.0.99:40000"),
		Zone:     2,
	}
	want := "udp orig 10.0.0.99:40000 -> 172.30.0.10:53 reply 10.240.0.4:5353 -> 10.0.0.99:40000 zone 2"
	if got := f.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
