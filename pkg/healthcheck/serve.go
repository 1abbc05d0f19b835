package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
	"k8s.io/klog/v2"
)

// Limits bound what clients can hold of one HTTP server: how long each phase
// of a connection may last and how many connections may be open at once.
// Without them net/http waits forever, so one client that opens connections
// and never finishes a request holds a goroutine and a file descriptor each.
type Limits struct {
	// ReadHeaderTimeout bounds reading the request headers, counted from the
	// first byte: trickling a byte at a time does not extend it.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading the whole request, headers and body.
	ReadTimeout time.Duration
	// WriteTimeout bounds the time from the end of the request headers to the
	// end of the response.
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no next request.
	IdleTimeout time.Duration
	// MaxConns is how many connections are served at once; more wait in the
	// kernel's accept queue until one closes. 0 means no limit.
	MaxConns int
}

// The probe servers (/healthz and /livez, and each service's
// healthCheckNodePort) answer kubelet and cloud load balancers. Their probes
// are one small GET without a body, answered with a few hundred bytes, and
// they give up after seconds (kubelet's default probe timeout is 1s), so a
// connection that is still busy after a few seconds serves no prober.
const (
	// probeReadHeaderTimeout: a probe's headers fit in one packet; 5s leaves
	// room for a congested path and nothing for a client trickling bytes.
	probeReadHeaderTimeout = 5 * time.Second
	// probeReadTimeout: probes have no body, so this only adds headroom over
	// the header timeout for clients that send one anyway.
	probeReadTimeout = 10 * time.Second
	// probeWriteTimeout: the response is tiny; a client that does not read it
	// within 10s has given up long ago.
	probeWriteTimeout = 10 * time.Second
	// probeIdleTimeout: the few probers that keep connections alive probe
	// every few seconds (load balancers: 5s to 30s), so they keep theirs;
	// connections left behind by gone clients free their slot.
	probeIdleTimeout = 30 * time.Second
	// probeMaxConns: a node sees a handful of concurrent probes (kubelet and a
	// few load balancer probers per service); 512 per listener is far above
	// that while bounding the goroutines and descriptors a flood can take.
	probeMaxConns = 512
)

// ProbeLimits returns the limits of the probe servers (see the probe*
// constants for why these values).
func ProbeLimits() Limits {
	return Limits{
		ReadHeaderTimeout: probeReadHeaderTimeout,
		ReadTimeout:       probeReadTimeout,
		WriteTimeout:      probeWriteTimeout,
		IdleTimeout:       probeIdleTimeout,
		MaxConns:          probeMaxConns,
	}
}

// shutdownTimeout bounds how long in-flight requests may delay the return of
// Serve once ctx is done.
const shutdownTimeout = 2 * time.Second

// Serve listens on addr (host:port) and serves h within limits until ctx is
// done, then shuts the server down and returns nil. An empty addr means the
// endpoint is disabled: Serve returns nil at once. It returns an error if it
// cannot listen or the server fails; restarting is left to the caller.
func Serve(ctx context.Context, addr string, h http.Handler, limits Limits) error {
	if addr == "" {
		return nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %q: %w", addr, err)
	}
	return serve(ctx, ln, h, limits)
}

// newServer returns an http.Server for h that enforces limits' timeouts, and
// ln wrapped to enforce its connection limit. Every server kproxy runs is
// built here, so none is left unbounded.
func newServer(ln net.Listener, h http.Handler, limits Limits) (*http.Server, net.Listener) {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: limits.ReadHeaderTimeout,
		ReadTimeout:       limits.ReadTimeout,
		WriteTimeout:      limits.WriteTimeout,
		IdleTimeout:       limits.IdleTimeout,
	}
	if limits.MaxConns > 0 {
		ln = netutil.LimitListener(ln, limits.MaxConns)
	}
	return srv, ln
}

// serve serves h on ln until ctx is done. It takes ownership of ln.
func serve(ctx context.Context, ln net.Listener, h http.Handler, limits Limits) error {
	logger := klog.FromContext(ctx).WithValues("address", ln.Addr().String())
	srv, ln := newServer(ln, h, limits)

	errCh := make(chan error, 1)
	go func() {
		errCh <- srv.Serve(ln)
	}()
	logger.V(2).Info("Serving HTTP")

	select {
	case err := <-errCh:
		// Serve only returns early on an accept failure.
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	// ctx is already done, so shutdown gets a fresh deadline of its own.
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Info("Graceful shutdown failed, closing connections", "err", err)
		// Close also closes ln; its error adds nothing once Shutdown failed.
		_ = srv.Close()
	}
	if err := <-errCh; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	}
	logger.V(2).Info("Stopped serving HTTP")
	return nil
}
