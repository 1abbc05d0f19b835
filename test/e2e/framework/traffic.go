package framework

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RequestTimeout bounds one dial and one request/answer.
const RequestTimeout = 2 * time.Second

// Reply is one kpx-echo answer.
type Reply struct {
	Pod    string         // the pod that answered ("external" for the external client)
	Client netip.AddrPort // the client address the pod saw
	Port   int            // the port the pod was reached on (the target port)
}

func (r Reply) String() string { return fmt.Sprintf("%s<-%s:%d", r.Pod, r.Client, r.Port) }

// ParseReply parses a kpx-echo answer line "<pod> <client ip:port> <server port>".
func ParseReply(line string) (Reply, error) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return Reply{}, fmt.Errorf("malformed echo answer %q", line)
	}
	client, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return Reply{}, fmt.Errorf("malformed echo answer %q: %w", line, err)
	}
	port, err := strconv.Atoi(f[2])
	if err != nil {
		return Reply{}, fmt.Errorf("malformed echo answer %q: %w", line, err)
	}
	return Reply{Pod: f[0], Client: netip.AddrPortFrom(client.Addr().Unmap(), client.Port()), Port: port}, nil
}

// HostPort joins a host and a port.
func HostPort(host string, port int32) string {
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// Request sends one request over proto ("tcp" or "udp") from inside the network namespace
// from to addr, on a new connection, and returns the answer.
func Request(ctx context.Context, from, proto, addr string) (Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	c, err := DialContext(ctx, from, proto, addr)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	return Ping(c)
}

// Dial opens a connection from inside the network namespace from, for tests that keep
// one open (Ping it to use it).
func Dial(ctx context.Context, from, proto, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	return DialContext(ctx, from, proto, addr)
}

// Ping sends one request on an open connection and reads the answer; over TCP the same
// connection can be pinged again and again. It sets no deadline.
func Ping(c net.Conn) (Reply, error) {
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return Reply{}, err
	}
	var line string
	if _, ok := c.(*net.UDPConn); ok {
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			return Reply{}, err
		}
		line = string(buf[:n])
	} else {
		// One byte at a time: a buffered reader would swallow later answers.
		var b strings.Builder
		one := make([]byte, 1)
		for {
			if _, err := c.Read(one); err != nil {
				return Reply{}, err
			}
			if one[0] == '\n' {
				break
			}
			b.WriteByte(one[0])
		}
		line = b.String()
	}
	return ParseReply(strings.TrimSpace(line))
}

// MaxRequests bounds the requests of one WaitForBackends round. With two backends picked
// at random, 100 requests all missing one has odds of 2^-99.
const MaxRequests = 100

// Backends sends up to n requests and counts the answers per pod; it stops early once
// every pod of want (if any) answered. Failed requests are returned as errors.
func Backends(ctx context.Context, from, proto, addr string, n int, want ...string) (map[string]int, []error) {
	seen := map[string]int{}
	var errs []error
	for range n {
		r, err := Request(ctx, from, proto, addr)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		seen[r.Pod]++
		if len(want) > 0 && sameSet(seen, want) {
			break
		}
	}
	return seen, errs
}

// WaitForBackends waits (up to 60 s) until requests from inside namespace from to addr are
// answered by exactly the pods want, every one of them and no other, with no failed
// request in the round; it fails the test otherwise. With no want it waits until requests
// fail (no backend).
func (c *Cluster) WaitForBackends(t testing.TB, from, proto, addr string, want ...string) {
	t.Helper()
	if err := WaitForBackends(context.Background(), 60*time.Second, from, proto, addr, want...); err != nil {
		t.Fatal(err)
	}
}

// WaitForBackends is Cluster.WaitForBackends returning an error.
func WaitForBackends(ctx context.Context, timeout time.Duration, from, proto, addr string, want ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var seen map[string]int
	var errs []error
	for ctx.Err() == nil {
		if len(want) == 0 {
			if _, err := Request(ctx, from, proto, addr); err != nil {
				return nil
			}
		} else {
			seen, errs = Backends(ctx, from, proto, addr, MaxRequests, want...)
			if len(errs) == 0 && sameSet(seen, want) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s %s from %s: wanted backends %v, last round got %v with %d failed requests (first: %v)",
		proto, addr, from, want, seen, len(errs), first(errs))
}

func sameSet(seen map[string]int, want []string) bool {
	if len(seen) != len(want) {
		return false
	}
	for _, w := range want {
		if seen[w] == 0 {
			return false
		}
	}
	return true
}

func first(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

// Metrics returns kproxy's metrics text on node, read from its metrics address
// (on 127.0.0.1:10249 in the node's namespace; deploy/ binds it to every address).
func (c *Cluster) Metrics(ctx context.Context, node string) (string, error) {
	return c.get(ctx, c.Node(node).NetNS, "127.0.0.1:10249", "/metrics")
}

// Healthz returns the status code and body of kproxy's /healthz on node.
func (c *Cluster) Healthz(ctx context.Context, node string) (int, string, error) {
	return c.httpGet(ctx, c.Node(node).NetNS, "127.0.0.1:10256", "/healthz")
}

func (c *Cluster) get(ctx context.Context, netnsName, addr, path string) (string, error) {
	code, body, err := c.httpGet(ctx, netnsName, addr, path)
	if err == nil && code != 200 {
		err = fmt.Errorf("GET %s%s in %s: status %d", addr, path, netnsName, code)
	}
	return body, err
}

// httpGet does a plain HTTP/1.0 GET from inside a namespace (no proxy, no keep-alive).
func (c *Cluster) httpGet(ctx context.Context, netnsName, addr, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := DialContext(ctx, netnsName, "tcp", addr)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		return 0, "", err
	}
	r := bufio.NewReader(conn)
	status, err := r.ReadString('\n')
	if err != nil {
		return 0, "", err
	}
	f := strings.Fields(status)
	if len(f) < 2 {
		return 0, "", fmt.Errorf("bad HTTP status line %q", status)
	}
	code, _ := strconv.Atoi(f[1])
	var body strings.Builder
	inBody := false
	for {
		line, err := r.ReadString('\n')
		if inBody {
			body.WriteString(line)
		} else if strings.TrimSpace(line) == "" {
			inBody = true
		}
		if err != nil {
			break
		}
	}
	return code, body.String(), nil
}

// MetricValue returns the value of the first sample of metric (a full sample name with
// labels, such as `kubeproxy_sync_proxy_rules_duration_seconds_count`) in a metrics text.
func MetricValue(text, metric string) (float64, bool) {
	for line := range strings.SplitSeq(text, "\n") {
		if rest, ok := strings.CutPrefix(line, metric+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// SyncCount returns how many IPv4 syncs kproxy on node has done
// (kubeproxy_sync_proxy_rules_duration_seconds_count); poll it to wait for a sync.
func (c *Cluster) SyncCount(ctx context.Context, node string) (float64, error) {
	text, err := c.Metrics(ctx, node)
	if err != nil {
		return 0, err
	}
	v, ok := MetricValue(text, `kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}`)
	if !ok {
		return 0, nil // no sync yet: the histogram has no samples
	}
	return v, nil
}
