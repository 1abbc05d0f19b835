package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/klog/v2"
)

const (
	// readHeaderTimeout stops a client that never finishes its request
	// headers from holding a connection open forever.
	readHeaderTimeout = 10 * time.Second
	// shutdownTimeout bounds how long in-flight requests may delay the
	// return of Serve once ctx is done.
	shutdownTimeout = 2 * time.Second
)

// Serve listens on addr (host:port) and serves h until ctx is done, then
// shuts the server down and returns nil. An empty addr means the endpoint is
// disabled: Serve returns nil at once. It returns an error if it cannot
// listen or the server fails; restarting is left to the caller.
func Serve(ctx context.Context, addr string, h http.Handler) error {
	if addr == "" {
		return nil
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %q: %w", addr, err)
	}
	return serve(ctx, ln, h)
}

// serve serves h on ln until ctx is done. It takes ownership of ln.
func serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	logger := klog.FromContext(ctx).WithValues("address", ln.Addr().String())
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
	}

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
