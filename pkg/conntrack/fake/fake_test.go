package fake_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/conntrack"
	"github.com/kproxy-dev/kproxy/pkg/conntrack/fake"
)

func flow(proto v1.Protocol, dst, backend string) conntrack.Flow {
	d, b := netip.MustParseAddrPort(dst), netip.MustParseAddrPort(backend)
	src := netip.MustParseAddrPort("10.0.0.99:40000")
	if d.Addr().Is6() {
		src = netip.MustParseAddrPort("[2001:db8::99]:40000")
	}
	return conntrack.Flow{Protocol: proto, OrigSrc: src, OrigDst: d, ReplySrc: b, ReplyDst: src}
}

func TestFakeListsUDPOfItsFamily(t *testing.T) {
	udp4 := flow(v1.ProtocolUDP, "172.30.0.10:53", "10.240.0.4:53")
	tcp4 := flow(v1.ProtocolTCP, "172.30.0.10:53", "10.240.0.4:53")
	udp6 := flow(v1.ProtocolUDP, "[fd00::a]:53", "[fd00:1::4]:53")
	ct := fake.New(v1.IPv4Protocol, udp4, tcp4, udp6, udp4)

	got, err := ct.ListUDP(context.Background())
	if err != nil {
		t.Fatalf("ListUDP: %v", err)
	}
	if want := []conntrack.Flow{udp4}; !slices.Equal(got, want) {
		t.Errorf("ListUDP = %v, want %v", got, want)
	}
	if got := ct.Flows(); len(got) != 3 {
		t.Errorf("Flows() = %v, want the 3 distinct entries", got)
	}
}

func TestFakeDelete(t *testing.T) {
	a := flow(v1.ProtocolUDP, "172.30.0.10:53", "10.240.0.4:53")
	b := flow(v1.ProtocolUDP, "172.30.0.10:53", "10.240.0.5:53")
	v6 := flow(v1.ProtocolUDP, "[fd00::a]:53", "[fd00:1::4]:53")
	gone := flow(v1.ProtocolUDP, "172.30.0.10:53", "10.240.0.6:53")
	ct := fake.New(v1.IPv4Protocol, a, b, v6)
	ctx := context.Background()

	n, err := ct.Delete(ctx, []conntrack.Flow{a, gone, v6})
	if err != nil || n != 1 {
		t.Errorf("Delete = %d, %v; want 1, nil (missing and other-family entries are not deleted)", n, err)
	}
	if ct.Has(a) || !ct.Has(b) || !ct.Has(v6) {
		t.Errorf("table after Delete = %v, want b and the IPv6 entry", ct.Flows())
	}

	errBoom := errors.New("boom")
	ct.FailDelete(errBoom)
	if n, err := ct.Delete(ctx, []conntrack.Flow{b}); !errors.Is(err, errBoom) || n != 0 || !ct.Has(b) {
		t.Errorf("failing Delete = %d, %v and deleted=%v; want 0, %v, nothing deleted", n, err, !ct.Has(b), errBoom)
	}
	if n, err := ct.Delete(ctx, []conntrack.Flow{b}); err != nil || n != 1 {
		t.Errorf("Delete after the injected failure = %d, %v; want 1, nil", n, err)
	}
}

func TestFakeFailList(t *testing.T) {
	errBoom := errors.New("boom")
	ct := fake.New(v1.IPv6Protocol)
	ct.FailList(errBoom)
	if _, err := ct.ListUDP(context.Background()); !errors.Is(err, errBoom) {
		t.Errorf("ListUDP = %v, want %v", err, errBoom)
	}
	if _, err := ct.ListUDP(context.Background()); err != nil {
		t.Errorf("second ListUDP = %v, want nil", err)
	}
}
