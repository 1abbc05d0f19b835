package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// soakOptions is the traffic a soak keeps up against one address until it is stopped.
type soakOptions struct {
	addr     string
	rate     int           // requests per second, each on a new TCP connection
	conns    int           // long-lived TCP connections, opened at the start and never replaced
	interval time.Duration // how often each long-lived connection is pinged
	timeout  time.Duration // bound of one dial, request or ping
}

// soakResult is what a soak prints when it stops: every failure counts, since a proxy swap
// must break neither new connections nor established ones.
type soakResult struct {
	Requests       int            `json:"requests"`
	FailedRequests int            `json:"failedRequests"`
	Conns          int            `json:"conns"`
	Pings          int            `json:"pings"`
	BrokenConns    int            `json:"brokenConns"` // long-lived connections that failed a ping
	Resets         int            `json:"resets"`      // failures that were a TCP reset (ECONNRESET, EPIPE, ECONNREFUSED)
	Answered       map[string]int `json:"answered"`    // requests answered, by pod
	Errors         []string       `json:"errors,omitempty"`
	Seconds        float64        `json:"seconds"`
}

// maxErrors bounds the error samples kept in a result; maxRate the requests per second.
const (
	maxErrors = 20
	maxRate   = 1000
)

type soakTally struct {
	mu sync.Mutex
	r  soakResult
}

func (t *soakTally) fail(what string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNREFUSED) {
		t.r.Resets++
	}
	if len(t.r.Errors) < maxErrors {
		t.r.Errors = append(t.r.Errors, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), what, err))
	}
}

// soak opens opts.conns long-lived connections, then sends opts.rate requests a second on
// new connections and pings every long-lived connection each opts.interval, until ctx ends.
// A long-lived connection that fails is not reopened: it counts as broken.
func soak(ctx context.Context, opts soakOptions) (soakResult, error) {
	start := time.Now()
	t := &soakTally{r: soakResult{Conns: opts.conns, Answered: map[string]int{}}}
	var open []net.Conn
	for i := range opts.conns {
		c, err := net.DialTimeout("tcp", opts.addr, opts.timeout)
		if err != nil {
			for _, o := range open {
				o.Close()
			}
			return soakResult{}, fmt.Errorf("opening long-lived connection %d: %w", i, err)
		}
		open = append(open, c)
	}
	var wg sync.WaitGroup
	for i, c := range open {
		wg.Go(func() {
			defer c.Close()
			r := bufio.NewReader(c)
			tick := time.NewTicker(opts.interval)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				_ = c.SetDeadline(time.Now().Add(opts.timeout))
				_, err := c.Write([]byte("ping\n"))
				if err == nil {
					_, err = r.ReadString('\n')
				}
				t.mu.Lock()
				t.r.Pings++
				if err != nil {
					t.r.BrokenConns++
				}
				t.mu.Unlock()
				if err != nil {
					t.fail(fmt.Sprintf("long-lived connection %d (%s)", i, c.LocalAddr()), err)
					return
				}
			}
		})
	}
	tick := time.NewTicker(time.Second / time.Duration(opts.rate))
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		wg.Go(func() {
			line, err := request("tcp", opts.addr, opts.timeout)
			t.mu.Lock()
			t.r.Requests++
			if err != nil {
				t.r.FailedRequests++
			} else if f := strings.Fields(line); len(f) > 0 {
				t.r.Answered[f[0]]++
			}
			t.mu.Unlock()
			if err != nil {
				t.fail("request", err)
			}
		})
	}
	wg.Wait()
	t.r.Seconds = time.Since(start).Seconds()
	return t.r, nil
}

// runSoak runs a soak until SIGTERM or SIGINT (ctx) and prints its result as JSON; the exit
// code is 1 if any request or ping failed.
func runSoak(ctx context.Context, opts soakOptions) int {
	if opts.rate < 1 || opts.rate > maxRate || opts.conns < 0 || opts.interval <= 0 {
		fmt.Fprintf(os.Stderr, "kpx-echo: -soak needs -rate in [1, %d], -conns >= 0 and -interval > 0\n", maxRate)
		return 2
	}
	res, err := soak(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kpx-echo:", err)
		return 1
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if res.FailedRequests > 0 || res.BrokenConns > 0 {
		return 1
	}
	return 0
}
