package healthcheck

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// guard bounds waits on the server goroutine; on success they end at once.
const guard = 5 * time.Second

func TestServeDisabled(t *testing.T) {
	if err := Serve(context.Background(), "", http.NotFoundHandler(), ProbeLimits()); err != nil {
		t.Fatalf("Serve with an empty address: %v, want nil", err)
	}
}

func TestServeBadAddress(t *testing.T) {
	if err := Serve(context.Background(), "127.0.0.1:notaport", http.NotFoundHandler(), ProbeLimits()); err == nil {
		t.Fatalf("Serve with an invalid address returned nil")
	}
}

func TestServeAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	if err := Serve(context.Background(), ln.Addr().String(), http.NotFoundHandler(), ProbeLimits()); err == nil {
		t.Fatalf("Serve on a port already in use returned nil")
	}
}

func TestServeUntilCancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello")
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, h, ProbeLimits()) }()

	// The listener is open before serve starts, so the request cannot race
	// the server's start-up.
	client := &http.Client{Timeout: guard}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "hello" {
		t.Fatalf("GET body %q, err %v; want \"hello\"", body, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v after cancellation, want nil", err)
		}
	case <-time.After(guard):
		t.Fatalf("serve did not return after cancellation")
	}

	// The listener is closed: a fresh connection must be refused.
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Fatalf("still accepting connections on %s after serve returned", addr)
	}
}
