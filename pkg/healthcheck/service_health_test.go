package healthcheck

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2/ktesting"
)

var (
	svcA = types.NamespacedName{Namespace: "ns", Name: "svc-a"}
	svcB = types.NamespacedName{Namespace: "other", Name: "svc-b"}
)

// fakeNet is a listen func that opens a real loopback listener on an
// ephemeral port for each requested address, so no test depends on a fixed
// port being free. It holds the set of addresses currently open, which is
// what tests assert on, and like the kernel refuses to open one twice.
type fakeNet struct {
	mu   sync.Mutex
	open map[string]*fakeListener // key: "network addr" as requested
	// fail makes listening on a key fail with the given error.
	fail map[string]error
	// broken makes Accept fail at once on listeners opened for a key.
	broken map[string]bool
}

func newFakeNet() *fakeNet {
	return &fakeNet{open: map[string]*fakeListener{}, fail: map[string]error{}, broken: map[string]bool{}}
}

func (f *fakeNet) listen(network, addr string) (net.Listener, error) {
	key := network + " " + addr
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[key]; err != nil {
		return nil, err
	}
	if _, ok := f.open[key]; ok {
		return nil, &net.OpError{Op: "listen", Net: network, Err: syscall.EADDRINUSE}
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	fl := &fakeListener{Listener: ln, net: f, key: key, broken: f.broken[key]}
	f.open[key] = fl
	return fl, nil
}

// keys returns the open addresses, sorted.
func (f *fakeNet) keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k := range f.open {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// addr returns the real address serving key, failing the test if key is not
// open.
func (f *fakeNet) addr(t *testing.T, key string) string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.open[key]
	if !ok {
		t.Fatalf("%q is not open; open: %v", key, f.open)
	}
	return l.Addr().String()
}

type fakeListener struct {
	net.Listener
	net    *fakeNet
	key    string
	broken bool
	once   sync.Once
}

func (l *fakeListener) Accept() (net.Conn, error) {
	if l.broken {
		return nil, errors.New("injected accept failure")
	}
	return l.Listener.Accept()
}

func (l *fakeListener) Close() error {
	l.once.Do(func() {
		l.net.mu.Lock()
		defer l.net.mu.Unlock()
		if l.net.open[l.key] == l {
			delete(l.net.open, l.key)
		}
	})
	return l.Listener.Close()
}

// reply is one HTTP answer of a health check server.
type reply struct {
	code   int
	header http.Header
	body   string
}

func request(t *testing.T, method, url string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatalf("building request: %v", err)
	}
	client := &http.Client{Timeout: guard}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return reply{code: resp.StatusCode, header: resp.Header, body: string(body)}
}

// assertClosed fails the test if something still accepts on addr.
func assertClosed(t *testing.T, addr string) {
	t.Helper()
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Errorf("still accepting connections on %s", addr)
	}
}

func newTestServer(t *testing.T, family v1.IPFamily, addrs []netip.Addr, proxy *ProxyHealth) (*ServiceHealthServer, *fakeNet, context.Context) {
	t.Helper()
	fn := newFakeNet()
	s := NewServiceHealthServer(family, addrs, proxy, fn.listen)
	t.Cleanup(s.Close)
	_, ctx := ktesting.NewTestContext(t)
	return s, fn, ctx
}

func mustSync(t *testing.T, ctx context.Context, s *ServiceHealthServer, ports map[types.NamespacedName]int32) {
	t.Helper()
	if err := s.SyncServices(ctx, ports); err != nil {
		t.Fatalf("SyncServices(%v): %v", ports, err)
	}
}

func TestServiceHealthResponse(t *testing.T) {
	for _, tc := range []struct {
		name          string
		endpoints     map[types.NamespacedName]int
		proxyStuck    bool
		wantCode      int
		wantWeight    string
		wantEndpoints string
		wantHealthy   string
	}{
		{
			name:     "no endpoints",
			wantCode: http.StatusServiceUnavailable, wantWeight: "0", wantEndpoints: "0", wantHealthy: "true",
		},
		{
			name:      "endpoints of another service only",
			endpoints: map[types.NamespacedName]int{svcB: 3},
			wantCode:  http.StatusServiceUnavailable, wantWeight: "0", wantEndpoints: "0", wantHealthy: "true",
		},
		{
			name:      "local endpoints",
			endpoints: map[types.NamespacedName]int{svcA: 2, svcB: 3},
			wantCode:  http.StatusOK, wantWeight: "2", wantEndpoints: "2", wantHealthy: "true",
		},
		{
			name:       "local endpoints but proxy unhealthy",
			endpoints:  map[types.NamespacedName]int{svcA: 2},
			proxyStuck: true,
			wantCode:   http.StatusServiceUnavailable, wantWeight: "2", wantEndpoints: "2", wantHealthy: "false",
		},
		{
			name:       "no endpoints and proxy unhealthy",
			proxyStuck: true,
			wantCode:   http.StatusServiceUnavailable, wantWeight: "0", wantEndpoints: "0", wantHealthy: "false",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, clk := newTestHealth()
			// The node is never marked eligible: per-service answers must
			// not depend on it.
			h.Updated(v1.IPv4Protocol)
			if tc.proxyStuck {
				h.QueuedUpdate(v1.IPv4Protocol)
				clk.Step(timeout)
			}
			s, fn, ctx := newTestServer(t, v1.IPv4Protocol, nil, h)
			mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30001})
			s.SyncEndpoints(tc.endpoints)

			wantBody := "{\n" +
				"\t\"service\": {\n" +
				"\t\t\"namespace\": \"ns\",\n" +
				"\t\t\"name\": \"svc-a\"\n" +
				"\t},\n" +
				"\t\"localEndpoints\": " + tc.wantEndpoints + ",\n" +
				"\t\"serviceProxyHealthy\": " + tc.wantHealthy + "\n" +
				"}"
			base := "http://" + fn.addr(t, "tcp4 0.0.0.0:30001")
			// Any path, any method.
			for _, req := range []struct{ method, path string }{
				{http.MethodGet, "/"},
				{http.MethodGet, "/healthz"},
				{http.MethodPost, "/any/thing?x=1"},
			} {
				r := request(t, req.method, base+req.path)
				if r.code != tc.wantCode {
					t.Errorf("%s %s: code %d, want %d", req.method, req.path, r.code, tc.wantCode)
				}
				for header, want := range map[string]string{
					"Content-Type":                     "application/json",
					"X-Content-Type-Options":           "nosniff",
					"X-Load-Balancing-Endpoint-Weight": tc.wantWeight,
				} {
					if got := r.header.Get(header); got != want {
						t.Errorf("%s %s: %s = %q, want %q", req.method, req.path, header, got, want)
					}
				}
				if r.body != wantBody {
					t.Errorf("%s %s: body\n%s\nwant\n%s", req.method, req.path, r.body, wantBody)
				}
			}
		})
	}
}

func TestServiceHealthNilProxyCountsAsHealthy(t *testing.T) {
	s, fn, ctx := newTestServer(t, v1.IPv4Protocol, nil, nil)
	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30001})
	s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1})
	if r := request(t, http.MethodGet, "http://"+fn.addr(t, "tcp4 0.0.0.0:30001")); r.code != http.StatusOK {
		t.Fatalf("code %d, want 200", r.code)
	}
}

func TestSyncEndpointsIndependentOfServices(t *testing.T) {
	h, _ := newTestHealth()
	s, fn, ctx := newTestServer(t, v1.IPv4Protocol, nil, h)

	// Endpoints synced before the service is opened are reported at once.
	s.SyncEndpoints(map[types.NamespacedName]int{svcA: 4})
	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30001})
	url := "http://" + fn.addr(t, "tcp4 0.0.0.0:30001")
	if r := request(t, http.MethodGet, url); r.code != http.StatusOK || r.header.Get("X-Load-Balancing-Endpoint-Weight") != "4" {
		t.Fatalf("code %d weight %q, want 200 and 4", r.code, r.header.Get("X-Load-Balancing-Endpoint-Weight"))
	}

	// Each call replaces the counts: a service left out has none.
	s.SyncEndpoints(map[types.NamespacedName]int{svcB: 1})
	if r := request(t, http.MethodGet, url); r.code != http.StatusServiceUnavailable || r.header.Get("X-Load-Balancing-Endpoint-Weight") != "0" {
		t.Fatalf("code %d weight %q, want 503 and 0", r.code, r.header.Get("X-Load-Balancing-Endpoint-Weight"))
	}

	// The caller's map is copied, not kept.
	counts := map[types.NamespacedName]int{svcA: 1}
	s.SyncEndpoints(counts)
	counts[svcA] = 0
	if r := request(t, http.MethodGet, url); r.code != http.StatusOK {
		t.Fatalf("code %d after the caller changed its map, want 200", r.code)
	}
}

func TestSyncServicesOpensClosesAndMoves(t *testing.T) {
	s, fn, ctx := newTestServer(t, v1.IPv4Protocol, nil, nil)

	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30001, svcB: 30002})
	if got, want := fn.keys(), []string{"tcp4 0.0.0.0:30001", "tcp4 0.0.0.0:30002"}; !slices.Equal(got, want) {
		t.Fatalf("open after adding two services: %v, want %v", got, want)
	}
	addrA := fn.addr(t, "tcp4 0.0.0.0:30001")
	addrB := fn.addr(t, "tcp4 0.0.0.0:30002")

	// Unchanged services keep their listeners (the fake refuses to open
	// an address twice, so reopening without closing would fail).
	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30001, svcB: 30002})
	if got := fn.addr(t, "tcp4 0.0.0.0:30001"); got != addrA {
		t.Errorf("unchanged service reopened: %s, was %s", got, addrA)
	}

	// Removing a service closes its port.
	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30001})
	if got, want := fn.keys(), []string{"tcp4 0.0.0.0:30001"}; !slices.Equal(got, want) {
		t.Fatalf("open after removing svc-b: %v, want %v", got, want)
	}
	assertClosed(t, addrB)

	// Changing the port closes the old one and opens the new one.
	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30003})
	if got, want := fn.keys(), []string{"tcp4 0.0.0.0:30003"}; !slices.Equal(got, want) {
		t.Fatalf("open after moving svc-a: %v, want %v", got, want)
	}
	assertClosed(t, addrA)
	r := request(t, http.MethodGet, "http://"+fn.addr(t, "tcp4 0.0.0.0:30003"))
	if !strings.Contains(r.body, `"name": "svc-a"`) {
		t.Errorf("new port answers %q, want svc-a", r.body)
	}

	// A port handed from one service to another in the same sync: the
	// old owner's listener is closed before the new one is opened.
	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcB: 30003})
	r = request(t, http.MethodGet, "http://"+fn.addr(t, "tcp4 0.0.0.0:30003"))
	if !strings.Contains(r.body, `"name": "svc-b"`) {
		t.Errorf("moved port answers %q, want svc-b", r.body)
	}

	mustSync(t, ctx, s, nil)
	if got := fn.keys(); len(got) != 0 {
		t.Fatalf("open after removing everything: %v", got)
	}
}

func TestSyncServicesRetriesFailedListen(t *testing.T) {
	s, fn, ctx := newTestServer(t, v1.IPv4Protocol, nil, nil)
	inUse := &net.OpError{Op: "listen", Net: "tcp4", Err: syscall.EADDRINUSE}
	fn.fail["tcp4 0.0.0.0:30001"] = inUse
	ports := map[types.NamespacedName]int32{svcA: 30001, svcB: 30002}

	err := s.SyncServices(ctx, ports)
	var le *ListenError
	if !errors.As(err, &le) {
		t.Fatalf("SyncServices: %v, want a *ListenError", err)
	}
	if le.Service != svcA || le.Port != 30001 || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("ListenError = %+v (%v), want svc-a port 30001 wrapping EADDRINUSE", le, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "ns/svc-a") || !strings.Contains(msg, "30001") {
		t.Errorf("error %q does not name the service and port", msg)
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 1 {
		t.Errorf("SyncServices joined %d errors, want 1: %v", n, err)
	}
	// The failure is not fatal: the other service is served.
	if got, want := fn.keys(), []string{"tcp4 0.0.0.0:30002"}; !slices.Equal(got, want) {
		t.Fatalf("open after a failed listen: %v, want %v", got, want)
	}

	// Still failing: tried again, and reported again.
	if err := s.SyncServices(ctx, ports); !errors.As(err, &le) || le.Service != svcA {
		t.Fatalf("second SyncServices: %v, want a ListenError for svc-a", err)
	}

	// The port becomes free: the next sync opens it.
	delete(fn.fail, "tcp4 0.0.0.0:30001")
	mustSync(t, ctx, s, ports)
	if got, want := fn.keys(), []string{"tcp4 0.0.0.0:30001", "tcp4 0.0.0.0:30002"}; !slices.Equal(got, want) {
		t.Fatalf("open after the retry: %v, want %v", got, want)
	}
}

func TestSyncServicesInvalidPort(t *testing.T) {
	s, fn, ctx := newTestServer(t, v1.IPv4Protocol, nil, nil)
	err := s.SyncServices(ctx, map[types.NamespacedName]int32{svcA: 0, svcB: 70000})
	var le *ListenError
	if !errors.As(err, &le) || len(err.(interface{ Unwrap() []error }).Unwrap()) != 2 {
		t.Fatalf("SyncServices with ports 0 and 70000: %v, want two ListenErrors", err)
	}
	if got := fn.keys(); len(got) != 0 {
		t.Fatalf("opened %v for invalid ports", got)
	}
}

func TestListenAddresses(t *testing.T) {
	addrs := []netip.Addr{
		netip.MustParseAddr("10.0.0.1"),
		netip.MustParseAddr("fd00::1"),
		netip.MustParseAddr("::ffff:10.0.0.2"), // IPv4-mapped counts as IPv4
		netip.MustParseAddr("10.0.0.1"),        // duplicate
		netip.MustParseAddr("fe80::1%eth0"),
	}
	for _, tc := range []struct {
		name   string
		family v1.IPFamily
		addrs  []netip.Addr
		want   []string
	}{
		{name: "IPv4 all addresses", family: v1.IPv4Protocol, want: []string{"tcp4 0.0.0.0:30001"}},
		{name: "IPv6 all addresses", family: v1.IPv6Protocol, want: []string{"tcp6 [::]:30001"}},
		{
			name: "IPv4 per address", family: v1.IPv4Protocol, addrs: addrs,
			want: []string{"tcp4 10.0.0.1:30001", "tcp4 10.0.0.2:30001"},
		},
		{
			name: "IPv6 per address", family: v1.IPv6Protocol, addrs: addrs,
			want: []string{"tcp6 [fd00::1]:30001", "tcp6 [fe80::1%eth0]:30001"},
		},
		{
			name: "no address of the family", family: v1.IPv6Protocol,
			addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, want: nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, fn, ctx := newTestServer(t, tc.family, tc.addrs, nil)
			mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30001})
			if got := fn.keys(); !slices.Equal(got, tc.want) {
				t.Fatalf("open: %v, want %v", got, tc.want)
			}
			// Every listener answers for the service.
			s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1})
			for _, key := range tc.want {
				if r := request(t, http.MethodGet, "http://"+fn.addr(t, key)); r.code != http.StatusOK {
					t.Errorf("%s: code %d, want 200", key, r.code)
				}
			}
			mustSync(t, ctx, s, nil)
			if got := fn.keys(); len(got) != 0 {
				t.Fatalf("open after removing the service: %v", got)
			}
		})
	}
}

func TestSyncServicesOpensAllAddressesOrNone(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}
	s, fn, ctx := newTestServer(t, v1.IPv4Protocol, addrs, nil)
	fn.fail["tcp4 10.0.0.2:30001"] = syscall.EADDRNOTAVAIL
	ports := map[types.NamespacedName]int32{svcA: 30001}

	if err := s.SyncServices(ctx, ports); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("SyncServices: %v, want EADDRNOTAVAIL", err)
	}
	// The address that did open is closed again, so the retry starts clean.
	if got := fn.keys(); len(got) != 0 {
		t.Fatalf("open after a partial failure: %v, want none", got)
	}

	delete(fn.fail, "tcp4 10.0.0.2:30001")
	mustSync(t, ctx, s, ports)
	if got, want := fn.keys(), []string{"tcp4 10.0.0.1:30001", "tcp4 10.0.0.2:30001"}; !slices.Equal(got, want) {
		t.Fatalf("open after the retry: %v, want %v", got, want)
	}
}

func TestServeFailureReopenedOnNextSync(t *testing.T) {
	s, fn, ctx := newTestServer(t, v1.IPv4Protocol, nil, nil)
	fn.broken["tcp4 0.0.0.0:30001"] = true
	ports := map[types.NamespacedName]int32{svcA: 30001}
	mustSync(t, ctx, s, ports)

	// The server stops on its own, asynchronously; wait for it.
	s.syncMu.Lock()
	sl := s.services[svcA]
	s.syncMu.Unlock()
	deadline := time.Now().Add(guard)
	for !sl.failed.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("server with a failing listener not marked failed")
		}
		time.Sleep(time.Millisecond)
	}

	delete(fn.broken, "tcp4 0.0.0.0:30001")
	mustSync(t, ctx, s, ports)
	s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1})
	if r := request(t, http.MethodGet, "http://"+fn.addr(t, "tcp4 0.0.0.0:30001")); r.code != http.StatusOK {
		t.Fatalf("reopened server: code %d, want 200", r.code)
	}
}

func TestServiceHealthClose(t *testing.T) {
	s, fn, ctx := newTestServer(t, v1.IPv4Protocol, nil, nil)
	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: 30001, svcB: 30002})
	addrA := fn.addr(t, "tcp4 0.0.0.0:30001")

	s.Close()
	if got := fn.keys(); len(got) != 0 {
		t.Fatalf("open after Close: %v", got)
	}
	assertClosed(t, addrA)

	if err := s.SyncServices(ctx, map[types.NamespacedName]int32{svcA: 30001}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("SyncServices after Close: %v, want net.ErrClosed", err)
	}
	if got := fn.keys(); len(got) != 0 {
		t.Fatalf("SyncServices after Close opened %v", got)
	}
	s.Close() // a second Close is harmless
}

// TestServiceHealthRealListen goes through net.Listen, the default.
func TestServiceHealthRealListen(t *testing.T) {
	// Borrow a free port from the kernel: port 0 is not a valid
	// healthCheckNodePort.
	probe, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	port := probe.Addr().(*net.TCPAddr).Port
	probe.Close()

	s := NewServiceHealthServer(v1.IPv4Protocol, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil, nil)
	defer s.Close()
	_, ctx := ktesting.NewTestContext(t)
	mustSync(t, ctx, s, map[types.NamespacedName]int32{svcA: int32(port)})
	s.SyncEndpoints(map[types.NamespacedName]int{svcA: 1})

	addr := probe.Addr().String()
	if r := request(t, http.MethodGet, "http://"+addr+"/"); r.code != http.StatusOK {
		t.Fatalf("code %d, want 200", r.code)
	}
	mustSync(t, ctx, s, nil)
	assertClosed(t, addr)
}
