package rulestest

import (
	"net/netip"
	"testing"
)

// TestTracer checks the tracer itself on hand-written rules, so that rule tests built on
// it can be trusted.
func TestTracer(t *testing.T) {
	tables := NewTables()
	payload := `*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:SVC - [0:0]
:SEP-A - [0:0]
:SEP-B - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "a svc" -m tcp -p tcp -d 172.30.0.1 --dport 80 -j SVC
-A KUBE-SERVICES -m comment --comment "local only" -m addrtype --src-type LOCAL -m udp -p udp -d 172.30.0.2 --dport 53 -j SEP-B
-A SVC -m tcp -p tcp -d 172.30.0.1 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A SVC -m recent --name SEP-A --rcheck --seconds 10 --reap -j SEP-A
-A SVC -m statistic --mode random --probability 0.5000000000 -j SEP-A
-A SVC -j SEP-B
-A SEP-A -m tcp -p tcp -j DNAT --to-destination 10.1.0.1:8080
-A SEP-B -j DNAT --to-destination 10.1.0.2:8080
COMMIT
*filter
:KUBE-SERVICES - [0:0]
-A FORWARD -j KUBE-SERVICES
-A INPUT -j KUBE-SERVICES
-A KUBE-SERVICES -m tcp -p tcp -d 172.30.0.9 --dport 80 -j REJECT
-A KUBE-SERVICES -m mark --mark 0x4000/0x4000 -d 10.1.0.2 -j DROP
COMMIT
`
	if err := tables.Apply([]byte(payload)); err != nil {
		t.Fatal(err)
	}
	tr := &Tracer{Tables: tables, LocalAddrs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}, MasqueradeMark: 0x4000}
	for _, tc := range []struct {
		name string
		pkt  Packet
		want string
	}{
		{"probabilistic branches are all followed", Packet{Src: netip.MustParseAddr("10.0.0.5"), Dst: netip.MustParseAddr("172.30.0.1"), Proto: "tcp", DPort: 80},
			"endpoints=10.1.0.1:8080,10.1.0.2:8080 masq=false verdict=ACCEPT"},
		{"negated source match marks for masquerade", Packet{Src: netip.MustParseAddr("203.0.113.1"), Dst: netip.MustParseAddr("172.30.0.1"), Proto: "tcp", DPort: 80},
			"endpoints=10.1.0.1:8080,10.1.0.2:8080 masq=true verdict=ACCEPT"},
		{"wrong protocol matches nothing", Packet{Src: netip.MustParseAddr("10.0.0.5"), Dst: netip.MustParseAddr("172.30.0.1"), Proto: "udp", DPort: 80},
			"endpoints= masq=false verdict=ACCEPT"},
		{"src-type LOCAL needs a local source", Packet{Src: netip.MustParseAddr("10.0.0.5"), Dst: netip.MustParseAddr("172.30.0.2"), Proto: "udp", DPort: 53},
			"endpoints= masq=false verdict=ACCEPT"},
		{"node-originated packets use OUTPUT", Packet{Src: netip.MustParseAddr("192.168.0.2"), Dst: netip.MustParseAddr("172.30.0.2"), Proto: "udp", DPort: 53, FromLocal: true},
			"endpoints=10.1.0.2:8080 masq=false verdict=ACCEPT"},
		{"filter REJECT", Packet{Src: netip.MustParseAddr("10.0.0.5"), Dst: netip.MustParseAddr("172.30.0.9"), Proto: "tcp", DPort: 80},
			"endpoints= masq=false verdict=REJECT"},
	} {
		res, err := tr.Trace(tc.pkt)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if res.String() != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, res, tc.want)
		}
	}

	// Unknown matches are errors, not silent mismatches.
	bad := NewTables()
	if err := bad.Apply([]byte("*nat\n-A PREROUTING -m owner --uid-owner 0 -j ACCEPT\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Tracer{Tables: bad}).Trace(Packet{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: "tcp", DPort: 1}); err == nil {
		t.Error("an unmodelled match was traced without error")
	}
}

func TestApplyRejectsWhatTheKernelRejects(t *testing.T) {
	for _, tc := range []struct{ name, payload string }{
		{"jump to a missing chain", "*nat\n:A - [0:0]\n-A A -j MISSING\nCOMMIT\n"},
		{"append to a missing chain", "*nat\n-A MISSING -j ACCEPT\nCOMMIT\n"},
		{"delete a referenced chain", "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-X B\nCOMMIT\n"},
		{"uncommitted table", "*nat\n:A - [0:0]\n"},
		{"unterminated quote", "*nat\n:A - [0:0]\n-A A -m comment --comment \"oops -j ACCEPT\nCOMMIT\n"},
	} {
		tables := NewTables()
		before := tables.Dump()
		if err := tables.Apply([]byte(tc.payload)); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
		if tables.Dump() != before {
			t.Errorf("%s: a failed table changed the state", tc.name)
		}
	}
}
