// Command kproxy is a drop-in replacement for kube-proxy in iptables mode.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kproxy-dev/kproxy/pkg/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
