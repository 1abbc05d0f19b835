package main

import (
	"context"
	"net"
	"testing"
	"time"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestSoakCountsAnswersAndBrokenConnections(t *testing.T) {
	opts := soakOptions{rate: 50, conns: 3, interval: 20 * time.Millisecond, timeout: time.Second}

	t.Run("healthy server", func(t *testing.T) {
		ln := listen(t)
		go serveTCP("pod-a", 80, ln)
		opts := opts
		opts.addr = ln.Addr().String()
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		defer cancel()
		res, err := soak(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		if res.FailedRequests != 0 || res.BrokenConns != 0 || len(res.Errors) != 0 {
			t.Errorf("failures against a healthy server: %+v", res)
		}
		if res.Requests == 0 || res.Answered["pod-a"] != res.Requests || res.Pings < res.Conns {
			t.Errorf("requests or pings not counted: %+v", res)
		}
	})

	t.Run("server that resets established connections", func(t *testing.T) {
		ln := listen(t)
		accepted := make(chan net.Conn, 100)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- c
			}
		}()
		opts := opts
		opts.addr = ln.Addr().String()
		opts.rate = 1
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		defer cancel()
		// Abort every connection accepted so far with a RST (linger 0) once the soak has
		// opened its long-lived ones.
		go func() {
			time.Sleep(100 * time.Millisecond)
			for {
				select {
				case c := <-accepted:
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
				case <-ctx.Done():
					return
				}
			}
		}()
		res, err := soak(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		if res.BrokenConns != opts.conns || res.Resets == 0 {
			t.Errorf("want %d broken connections and resets counted, got %+v", opts.conns, res)
		}
	})
}
