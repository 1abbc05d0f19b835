package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// ListenError reports that a service's health check port could not be opened
// on this node. It is expected (another process may hold the port), so it is
// never fatal: the port is tried again on the next SyncServices.
type ListenError struct {
	// Service is the service whose health check could not be served, so
	// that the caller can attach an event to it.
	Service types.NamespacedName
	// Port is the service's healthCheckNodePort.
	Port int32
	// Err is the underlying failure.
	Err error
}

// Error implements error.
func (e *ListenError) Error() string {
	return fmt.Sprintf("serving health check of service %s on port %d: %v", e.Service, e.Port, e.Err)
}

// Unwrap returns the underlying failure.
func (e *ListenError) Unwrap() error { return e.Err }

// ServiceHealthServer serves, for each LoadBalancer service with
// externalTrafficPolicy Local, HTTP on its healthCheckNodePort, telling load
// balancers whether this node has local endpoints. There is one per IP
// family, as there is one proxier per family. It is safe for concurrent use.
type ServiceHealthServer struct {
	family v1.IPFamily
	// network is "tcp4" or "tcp6", so that each family's server binds only
	// its own family even on the wildcard address.
	network string
	// addrs are the addresses to listen on, all of this server's family;
	// nil means the family's wildcard address.
	addrs  []netip.Addr
	proxy  *ProxyHealth
	listen func(network, addr string) (net.Listener, error)
	// limits apply to each listener: load balancers probe these ports from
	// outside the cluster, so they are the most exposed servers kproxy runs.
	limits Limits

	// syncMu serialises SyncServices and Close, which may block on
	// listening and closing; request handlers never take it.
	syncMu sync.Mutex
	// services holds the services whose listeners are all open. A service
	// whose ports could not be opened is absent, which is what makes the
	// next SyncServices try again.
	services map[types.NamespacedName]*serviceListeners
	closed   bool

	// countsMu guards counts, which request handlers read.
	countsMu sync.RWMutex
	// counts holds the last SyncEndpoints, kept apart from services so that
	// a service opened after its endpoints were synced reports them at once.
	counts map[types.NamespacedName]int
}

// serviceListeners is the set of HTTP servers answering for one service, one
// per listen address.
type serviceListeners struct {
	port      int32
	listeners []net.Listener
	servers   []*http.Server
	// running counts the serving goroutines, so that close returns only
	// when none is left.
	running sync.WaitGroup
	// failed is set when a server stops on its own (an accept error): the
	// service is then reopened on the next SyncServices.
	failed atomic.Bool
}

// NewServiceHealthServer returns a server set for family that has no
// services yet. addrs nil means listening on the family's wildcard address
// (0.0.0.0 or [::]); otherwise there is one listener per address of the
// family, others being ignored, so a non-nil list with none of them serves
// nothing, just as NodePorts are not served then. proxy gives the proxy's own
// health; nil counts as healthy. listen opens listeners; nil means
// net.Listen.
func NewServiceHealthServer(family v1.IPFamily, addrs []netip.Addr, proxy *ProxyHealth, listen func(network, addr string) (net.Listener, error)) *ServiceHealthServer {
	if listen == nil {
		listen = net.Listen
	}
	network := "tcp4"
	if family == v1.IPv6Protocol {
		network = "tcp6"
	}
	return &ServiceHealthServer{
		family:   family,
		network:  network,
		addrs:    familyAddrs(family, addrs),
		proxy:    proxy,
		listen:   listen,
		limits:   ProbeLimits(),
		services: map[types.NamespacedName]*serviceListeners{},
		counts:   map[types.NamespacedName]int{},
	}
}

// familyAddrs returns the distinct addresses of addrs that belong to family,
// IPv4-mapped IPv6 addresses counting as IPv4. It keeps nil as nil, since
// nil means "all addresses".
func familyAddrs(family v1.IPFamily, addrs []netip.Addr) []netip.Addr {
	if addrs == nil {
		return nil
	}
	out := []netip.Addr{}
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || a.Is4() != (family == v1.IPv4Protocol) || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a)
	}
	return out
}

// SyncServices makes the open health check ports match ports, which maps
// each service to its healthCheckNodePort: it closes the ports of removed
// services and of services whose port changed, then opens those not open
// yet. A port that cannot be opened is logged and tried again on the next
// call; the returned error joins one *ListenError per such service, for the
// caller to report. After Close it opens nothing and returns an error
// wrapping net.ErrClosed.
func (s *ServiceHealthServer) SyncServices(ctx context.Context, ports map[types.NamespacedName]int32) error {
	logger := klog.FromContext(ctx).WithValues("ipFamily", s.family)

	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.closed {
		return fmt.Errorf("syncing %s service health checks: %w", s.family, net.ErrClosed)
	}

	// Close everything first: a port moving from one service to another
	// must be free before it is reopened.
	for nsn, sl := range s.services {
		port, wanted := ports[nsn]
		if wanted && port == sl.port && !sl.failed.Load() {
			continue
		}
		logger.V(4).Info("Closing service health check", "service", nsn, "port", sl.port)
		sl.close()
		delete(s.services, nsn)
	}

	var errs []error
	for nsn, port := range ports {
		if _, open := s.services[nsn]; open {
			continue
		}
		sl, err := s.open(logger, nsn, port)
		if err != nil {
			logger.Error(err, "Opening service health check failed, will retry", "service", nsn, "port", port)
			errs = append(errs, &ListenError{Service: nsn, Port: port, Err: err})
			continue
		}
		logger.V(4).Info("Opened service health check", "service", nsn, "port", port)
		s.services[nsn] = sl
	}
	return errors.Join(errs...)
}

// open listens on port at every address and serves nsn's health on each. It
// opens all addresses or none, so that a half-open service is retried whole.
func (s *ServiceHealthServer) open(logger klog.Logger, nsn types.NamespacedName, port int32) (*serviceListeners, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("port %d out of range", port)
	}
	sl := &serviceListeners{port: port}
	for _, addr := range s.listenAddrs(uint16(port)) {
		ln, err := s.listen(s.network, addr)
		if err != nil {
			// Nothing serves yet, so closing the listeners opened so far
			// is all that is needed.
			for _, l := range sl.listeners {
				_ = l.Close()
			}
			return nil, fmt.Errorf("listening on %s %s: %w", s.network, addr, err)
		}
		sl.listeners = append(sl.listeners, ln)
	}

	h := s.handler(nsn)
	// Requests outlive the SyncServices call; they get its logger but not
	// its cancellation.
	baseCtx := klog.NewContext(context.Background(), logger.WithValues("service", nsn))
	for i, raw := range sl.listeners {
		srv, ln := newServer(raw, h, s.limits)
		srv.BaseContext = func(net.Listener) context.Context { return baseCtx }
		// close must close what Serve accepts on, so that an Accept waiting
		// for a free connection slot returns too.
		sl.listeners[i] = ln
		sl.servers = append(sl.servers, srv)
		sl.running.Go(func() {
			err := srv.Serve(ln)
			if !errors.Is(err, http.ErrServerClosed) {
				sl.failed.Store(true)
				logger.Error(err, "Service health check stopped serving, will reopen", "service", nsn, "address", ln.Addr().String())
			}
		})
	}
	return sl, nil
}

// listenAddrs returns the host:port strings to listen on for port.
func (s *ServiceHealthServer) listenAddrs(port uint16) []string {
	if s.addrs == nil {
		wildcard := netip.IPv4Unspecified()
		if s.family == v1.IPv6Protocol {
			wildcard = netip.IPv6Unspecified()
		}
		return []string{netip.AddrPortFrom(wildcard, port).String()}
	}
	out := make([]string, 0, len(s.addrs))
	for _, a := range s.addrs {
		out = append(out, netip.AddrPortFrom(a, port).String())
	}
	return out
}

// close stops every server of the service and returns once their listeners
// are closed, so the port can be reopened at once.
func (sl *serviceListeners) close() {
	for i, srv := range sl.servers {
		// Close drops open connections; closing the listener as well makes
		// the port free now even if Serve has not started tracking it yet.
		// Both errors only say the thing was already closed.
		_ = srv.Close()
		_ = sl.listeners[i].Close()
	}
	sl.running.Wait()
}

// SyncEndpoints sets, per service, the number of distinct IPs of its ready
// endpoints on this node. A service absent from counts has none.
func (s *ServiceHealthServer) SyncEndpoints(counts map[types.NamespacedName]int) {
	c := make(map[types.NamespacedName]int, len(counts))
	for nsn, n := range counts {
		c[nsn] = n
	}
	s.countsMu.Lock()
	defer s.countsMu.Unlock()
	s.counts = c
}

// Close closes every health check port and waits for the servers to stop.
// The server set cannot be used again.
func (s *ServiceHealthServer) Close() {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	for nsn, sl := range s.services {
		sl.close()
		delete(s.services, nsn)
	}
	s.closed = true
}

// serviceStatus is the body of a service health check response. Field order
// matters: the body must match upstream's byte for byte.
type serviceStatus struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// handler answers any path and method with nsn's health: 200 when the node
// has local endpoints for it and the proxy is healthy, 503 otherwise.
// Node eligibility is left out on purpose, as upstream does: it already
// fails the proxy's /healthz, which load balancers may probe too.
func (s *ServiceHealthServer) handler(nsn types.NamespacedName) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.countsMu.RLock()
		count := s.counts[nsn]
		s.countsMu.RUnlock()
		proxyHealthy := s.proxy == nil || s.proxy.Health().Healthy

		var st serviceStatus
		st.Service.Namespace = nsn.Namespace
		st.Service.Name = nsn.Name
		st.LocalEndpoints = count
		st.ServiceProxyHealthy = proxyHealthy
		// Tab-indented, no trailing newline: the exact bytes upstream sends.
		body, err := json.MarshalIndent(st, "", "\t")
		if err != nil {
			// Strings, an int and a bool always encode; keep the status
			// code, which is all load balancers act on.
			klog.FromContext(r.Context()).Error(err, "Encoding service health status")
			body = []byte(`{}`)
		}

		code := http.StatusServiceUnavailable
		if count != 0 && proxyHealthy {
			code = http.StatusOK
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		// Some load balancers weigh nodes by this header.
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		w.WriteHeader(code)
		// A failed write means the client went away; there is no one left
		// to report it to.
		_, _ = w.Write(body)
	})
}
