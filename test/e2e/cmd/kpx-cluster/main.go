// Command kpx-cluster is the part of hack/cluster-up.sh and hack/demo.sh that talks to the
// API (test/e2e/framework). Run it inside the cluster's control-plane namespace:
//
//	ip netns exec kpx-cp kpx-cluster bootstrap -state DIR -rbac deploy/rbac.yaml [-identity serviceaccount]
//	ip netns exec kpx-cp kpx-cluster apply -state DIR -f FILE   # Pods run as the harness's kubelet
//	ip netns exec kpx-cp kpx-cluster slices -state DIR -n NAMESPACE
//
// bootstrap registers the Nodes and creates kproxy's RBAC; apply creates the objects of a
// manifest, running its Pods on their pod slots (Running and Ready, with the slot's IP).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kpx-cluster bootstrap|apply|slices -state DIR [flags]")
		os.Exit(2)
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	state := fs.String("state", "", "the cluster's state folder (STATE_DIR of hack/cluster-up.sh)")
	rbac := fs.String("rbac", "", "bootstrap: a manifest of kproxy's ServiceAccount and RBAC")
	identity := fs.String("identity", "kube-proxy", `bootstrap: kproxy's API user, "kube-proxy" or "serviceaccount"`)
	file := fs.String("f", "", "apply: the manifest to create")
	namespace := fs.String("n", "default", "slices: the namespace")
	netns := fs.Bool("netns", false, "dial the API server from inside the control-plane namespace (when not run there)")
	_ = fs.Parse(os.Args[2:])
	if *state == "" {
		fmt.Fprintln(os.Stderr, "kpx-cluster: -state is required")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := run(ctx, cmd, *state, *rbac, *identity, *file, *namespace, *netns); err != nil {
		fmt.Fprintf(os.Stderr, "kpx-cluster %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cmd, state, rbac, identity, file, namespace string, netns bool) error {
	c, err := framework.Connect(state, netns)
	if err != nil {
		return err
	}
	switch cmd {
	case "bootstrap":
		if err := c.Bootstrap(ctx, rbac, identity); err != nil {
			return err
		}
		fmt.Printf("kpx-cluster: registered %d nodes\n", len(c.Nodes))
	case "apply":
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		if err := c.Apply(ctx, data); err != nil {
			return err
		}
		fmt.Printf("kpx-cluster: applied %s\n", file)
	case "slices":
		out, err := c.DescribeEndpointSlices(ctx, namespace)
		if err != nil {
			return err
		}
		fmt.Print(out)
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
	return nil
}
