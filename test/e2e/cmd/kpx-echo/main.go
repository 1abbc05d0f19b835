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
// or the error, one per line; the exit code is 1 if any request failed. With -every it
// waits that long between requests; with -reuse (tcp and udp) it sends them all on one
// connection or socket, so that they share one conntrack entry.
//
// As a soak (-soak ADDR) it keeps -conns long-lived TCP connections open, pinging each every
// -interval, and sends -rate requests a second on new TCP connections, until SIGTERM; then it
// prints a JSON summary (requests, failures, broken connections, resets, answers by pod) and
// exits 1 if anything failed. It is the traffic of the real-node proxy swap
// (hack/realnode/swap.sh).
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
	every := flag.Duration("every", 0, "client: pause between requests")
	reuse := flag.Bool("reuse", false, "client: send every request on one connection (tcp) or socket (udp)")
	soakAddr := flag.String("soak", "", "run a soak against this host:port until SIGTERM")
	rate := flag.Int("rate", 20, "soak: requests per second, each on a new TCP connection")
	conns := flag.Int("conns", 4, "soak: long-lived TCP connections")
	interval := flag.Duration("interval", 200*time.Millisecond, "soak: ping period of each long-lived connection")
	flag.Parse()

	if *client != "" {
		os.Exit(runClient(clientOptions{proto: *proto, addr: *client, count: *count, timeout: *timeout, every: *every, reuse: *reuse}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *soakAddr != "" {
		os.Exit(runSoak(ctx, soakOptions{addr: *soakAddr, rate: *rate, conns: *conns, interval: *interval, timeout: *timeout}))
	}
	if *name == "" {
		fmt.Fprintln(os.Stderr, "kpx-echo: -name is required")
		os.Exit(2)
	}
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

// clientOptions are the requests of one client run.
type clientOptions struct {
	proto, addr string
	count       int
	timeout     time.Duration // bound of one request
	every       time.Duration // pause between requests
	reuse       bool          // one connection or socket for every request
}

func runClient(o clientOptions) int {
	var shared net.Conn
	if o.reuse {
		if o.proto == "http" {
			fmt.Fprintln(os.Stderr, "kpx-echo: -reuse needs -proto tcp or udp")
			return 2
		}
		c, err := net.DialTimeout(o.proto, o.addr, o.timeout)
		if err != nil {
			fmt.Printf("error: %v\n", err)
			return 1
		}
		defer c.Close()
		shared = c
	}
	failed := 0
	for i := range o.count {
		if i > 0 {
			time.Sleep(o.every)
		}
		var line string
		var err error
		if shared != nil {
			line, err = exchange(shared, o.proto, o.timeout)
		} else {
			line, err = request(o.proto, o.addr, o.timeout)
		}
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

// exchange sends one ping on an open TCP connection or UDP socket and reads the answer.
// Over UDP a lost answer only costs this request: the socket stays usable.
func exchange(c net.Conn, proto string, timeout time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	if proto == "udp" {
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(buf[:n])), nil
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
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
	if proto != "http" {
		return exchange(c, proto, timeout)
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
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
}
