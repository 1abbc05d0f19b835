// Command kpx-echo is the e2e cluster's pod: an echo server that tells a client who
// answered and whom it saw, and a client for it.
//
// As a server (the default) it listens on every port of -ports, on all addresses, over TCP
// and UDP. Every answer is one line
//
//	<pod> <client ip:port> <server port>
//
// so a test can tell which backend a service sent it to, whether the source address was
// preserved or masqueraded, and which target port was hit. Over TCP the client speaks
// first: each line it sends gets one answer line, on the same connection for as long as
// the client keeps it open (long-lived connections survive proxy restarts); a request that
// starts with "GET " or "HEAD " gets an HTTP/1.1 answer with that line as its body, so curl
// works too. Over UDP each datagram gets one answer. SCTP is not served: the kernels this
// runs on have no SCTP sockets.
//
// As a client (-client ADDR) it sends -count requests over -proto and prints each answer,
// or the error, one per line; the exit code is 1 if any request failed.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// idleTimeout closes TCP connections the client stopped using.
const idleTimeout = 10 * time.Minute

func main() {
	name := flag.String("name", "", "the pod name put in every answer (server)")
	ports := flag.String("ports", "80,8080,8443,9090,5353,9376", "comma-separated ports to serve on, TCP and UDP (server)")
	client := flag.String("client", "", "run as a client and send requests to this host:port")
	proto := flag.String("proto", "tcp", "client protocol: tcp, udp or http")
	count := flag.Int("count", 1, "client: number of requests, each on a new connection")
	timeout := flag.Duration("timeout", 2*time.Second, "client: timeout of one request")
	flag.Parse()

	if *client != "" {
		os.Exit(runClient(*proto, *client, *count, *timeout))
	}
	if *name == "" {
		fmt.Fprintln(os.Stderr, "kpx-echo: -name is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, *name, *ports); err != nil {
		fmt.Fprintln(os.Stderr, "kpx-echo:", err)
		os.Exit(1)
	}
}

func serve(ctx context.Context, name, portList string) error {
	var closers []func() error
	var wg sync.WaitGroup
	for _, p := range strings.Split(portList, ",") {
		port, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
		if err != nil {
			return fmt.Errorf("bad port %q: %w", p, err)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return err
		}
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		if err != nil {
			return err
		}
		closers = append(closers, ln.Close, pc.Close)
		wg.Go(func() { serveTCP(name, int(port), ln) })
		wg.Go(func() { serveUDP(name, int(port), pc) })
	}
	fmt.Printf("kpx-echo: %s serving tcp and udp on %s\n", name, portList)
	<-ctx.Done()
	for _, c := range closers {
		_ = c()
	}
	wg.Wait()
	return nil
}

func answer(name string, client net.Addr, port int) string {
	return fmt.Sprintf("%s %s %d", name, client, port)
}

func serveTCP(name string, port int, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed at shutdown
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			reply := answer(name, c.RemoteAddr(), port)
			for first := true; ; first = false {
				_ = c.SetDeadline(time.Now().Add(idleTimeout))
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if first && (strings.HasPrefix(line, "GET ") || strings.HasPrefix(line, "HEAD ")) {
					// Read the headers so that closing does not reset the connection.
					for {
						h, err := r.ReadString('\n')
						if err != nil || strings.TrimSpace(h) == "" {
							break
						}
					}
					body := reply + "\n"
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
					return
				}
				if _, err := fmt.Fprintln(c, reply); err != nil {
					return
				}
			}
		}()
	}
}

func serveUDP(name string, port int, pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed at shutdown
		}
		_, _ = pc.WriteTo([]byte(answer(name, addr, port)+"\n"), addr)
	}
}

func runClient(proto, addr string, count int, timeout time.Duration) int {
	failed := 0
	for range count {
		line, err := request(proto, addr, timeout)
		if err != nil {
			failed++
			fmt.Printf("error: %v\n", err)
			continue
		}
		fmt.Println(line)
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// request makes one request on a new connection and returns the answer line.
func request(proto, addr string, timeout time.Duration) (string, error) {
	network := proto
	if proto == "http" {
		network = "tcp"
	}
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	switch proto {
	case "udp":
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return "", err
		}
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(buf[:n])), nil
	case "http":
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr); err != nil {
			return "", err
		}
		r := bufio.NewReader(c)
		status, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if !strings.Contains(status, " 200 ") {
			return "", errors.New("HTTP status: " + strings.TrimSpace(status))
		}
		for {
			h, err := r.ReadString('\n')
			if err != nil {
				return "", err
			}
			if strings.TrimSpace(h) == "" {
				break
			}
		}
		body, err := r.ReadString('\n')
		return strings.TrimSpace(body), err
	default:
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(line), nil
	}
}
