package healthcheck

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// limitedServers starts each kind of server kproxy runs with the given
// limits and returns its address; the servers stop when the test ends.
var limitedServers = []struct {
	name  string
	start func(t *testing.T, limits Limits) string
}{
	{"healthz", startLimitedProbeServer},
	{"service health check", startLimitedServiceHealthServer},
}

func startLimitedProbeServer(t *testing.T, limits Limits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, NewProxyHealth(time.Minute, clock.RealClock{}).Handler(), limits) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func startLimitedServiceHealthServer(t *testing.T, limits Limits) string {
	t.Helper()
	fn := newFakeNet()
	s := NewServiceHealthServer(v1.IPv4Protocol, nil, nil, fn.listen)
	s.limits = limits
	if err := s.SyncServices(context.Background(), map[types.NamespacedName]int32{svcA: 30000}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return fn.addr(t, "tcp4 0.0.0.0:30000")
}

// shortTimeout is a timeout the tests see fire; slack absorbs scheduling
// delays on a loaded machine.
const (
	shortTimeout = 300 * time.Millisecond
	slack        = time.Second
)

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, guard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

const probeRequest = "GET /healthz HTTP/1.1\r\nHost: kproxy\r\n\r\n"

// A client that sends its headers a byte at a time and never finishes is
// disconnected once the header timeout has passed since its first byte,
// however steadily it keeps trickling.
func TestServersCloseSlowClients(t *testing.T) {
	for _, srv := range limitedServers {
		t.Run(srv.name, func(t *testing.T) {
			addr := srv.start(t, Limits{ReadHeaderTimeout: shortTimeout, ReadTimeout: shortTimeout,
				WriteTimeout: slack, IdleTimeout: slack})
			conn := dial(t, addr)
			start := time.Now()
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				// Longer than the timeout plus slack: only the server can end this.
				partial := []byte("GET /healthz HTTP/1.1\r\nHost: kproxy\r\nX-Slow: " + strings.Repeat("a", 60))
				for _, b := range partial {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					if _, err := conn.Write([]byte{b}); err != nil {
						return
					}
				}
			}()
			_ = conn.SetReadDeadline(time.Now().Add(guard))
			got, err := io.ReadAll(conn)
			elapsed := time.Since(start)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection still open after %s", elapsed)
			}
			// net/http may say 400 before closing; the handler must not have run.
			if len(got) > 0 && !strings.HasPrefix(string(got), "HTTP/1.1 400 ") {
				t.Errorf("unfinished request got a response: %q", got)
			}
			if elapsed > shortTimeout+slack {
				t.Errorf("closed after %s, want within %s", elapsed, shortTimeout+slack)
			}
		})
	}
}

// A keep-alive client that sends no next request is disconnected after the
// idle timeout, and not before: probers that reuse connections keep them.
func TestServersCloseIdleKeepAliveClients(t *testing.T) {
	for _, srv := range limitedServers {
		t.Run(srv.name, func(t *testing.T) {
			addr := srv.start(t, Limits{ReadHeaderTimeout: slack, ReadTimeout: slack, WriteTimeout: slack, IdleTimeout: shortTimeout})
			conn := dial(t, addr)
			br := bufio.NewReader(conn)
			_ = conn.SetDeadline(time.Now().Add(guard))
			for i := range 2 { // the second request shows the connection is kept alive
				if _, err := conn.Write([]byte(probeRequest)); err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				readResponse(t, br)
			}
			idleSince := time.Now()
			_, err := br.ReadByte()
			idle := time.Since(idleSince)
			if errors.Is(err, os.ErrDeadlineExceeded) || err == nil {
				t.Fatalf("idle connection not closed after %s (err %v)", idle, err)
			}
			if idle < shortTimeout/2 || idle > shortTimeout+slack {
				t.Errorf("idle connection closed after %s, want about %s", idle, shortTimeout)
			}
		})
	}
}

// With MaxConns connections open, the next one is not served until one of
// them closes.
func TestServersLimitConnections(t *testing.T) {
	const maxConns = 2
	for _, srv := range limitedServers {
		t.Run(srv.name, func(t *testing.T) {
			// Long timeouts: nothing but the test may close the held connections.
			addr := srv.start(t, Limits{ReadHeaderTimeout: time.Minute, ReadTimeout: time.Minute,
				WriteTimeout: time.Minute, IdleTimeout: time.Minute, MaxConns: maxConns})
			var held []net.Conn
			for range maxConns {
				conn := dial(t, addr)
				_ = conn.SetDeadline(time.Now().Add(guard))
				if _, err := conn.Write([]byte(probeRequest)); err != nil {
					t.Fatal(err)
				}
				readResponse(t, bufio.NewReader(conn)) // served, then kept alive: it holds a slot
				held = append(held, conn)
			}

			extra := dial(t, addr)
			br := bufio.NewReader(extra)
			if _, err := extra.Write([]byte(probeRequest)); err != nil {
				t.Fatal(err)
			}
			_ = extra.SetReadDeadline(time.Now().Add(shortTimeout))
			if _, err := br.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection %d was served while %d were open (err %v)", maxConns+1, maxConns, err)
			}

			_ = held[0].Close()
			_ = extra.SetReadDeadline(time.Now().Add(guard))
			readResponse(t, br)
		})
	}
}

// readResponse reads one whole HTTP response, failing the test if there is none.
func readResponse(t *testing.T, br *bufio.Reader) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("reading body: %v", err)
	}
}
