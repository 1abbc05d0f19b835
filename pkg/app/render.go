package app

import (
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/config"
	"github.com/kproxy-dev/kproxy/pkg/manifests"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/sources"
	"github.com/kproxy-dev/kproxy/pkg/tracker"
)

// renderOptions are `kproxy render`'s own flags; the proxy flags are kube-proxy's.
type renderOptions struct {
	files    []string
	nodeName string
	family   string
}

func newRenderCommand() *cobra.Command {
	ro := &renderOptions{family: string(v1.IPv4Protocol)}
	proxyOpts := NewOptions()
	cmd := &cobra.Command{
		Use:   "render -f DIR|FILE [-f ...] [--node-name NODE] [kube-proxy flags]",
		Short: "Print the iptables-restore payload a node would get for Service and EndpointSlice manifests",
		Long: `render reads Service, EndpointSlice and Node manifests (YAML or JSON, several documents
per file, v1 Lists) and prints the iptables-restore payload kproxy would apply on a node,
without a cluster and without root. kube-proxy's flags (--cluster-cidr, --masquerade-all,
--config, ...) shape the rules as they would on the node. The output can be checked with
"iptables-restore --test --noflush".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(ro.files) == 0 {
				return fmt.Errorf("render: -f is required")
			}
			cfg, err := proxyOpts.Complete(cmd.Context(), cmd.Flags())
			if err != nil {
				return err
			}
			if err := applyLogging(cfg, nil); err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), cmd.ErrOrStderr(), ro, cfg)
		},
	}
	fs := cmd.Flags()
	fs.StringArrayVarP(&ro.files, "filename", "f", nil, "Manifest file or directory (repeatable).")
	fs.StringVar(&ro.nodeName, "node-name", "", "The node to render for; endpoints on it count as local.")
	fs.StringVar(&ro.family, "ip-family", ro.family, "IP family to render: IPv4 or IPv6.")
	proxyOpts.AddFlags(fs)
	return cmd
}

func render(out, errOut io.Writer, ro *renderOptions, cfg *config.Config) error {
	family := v1.IPFamily(ro.family)
	if family != v1.IPv4Protocol && family != v1.IPv6Protocol {
		return fmt.Errorf("render: --ip-family must be IPv4 or IPv6, not %q", ro.family)
	}
	objs, err := manifests.Load(ro.files...)
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	node, err := pickNode(objs.Nodes, ro.nodeName)
	if err != nil {
		return err
	}
	nodeName := ro.nodeName
	if node != nil {
		nodeName = node.Name
	}
	nodeIP := nodeIPs(node)[family]

	invalid := 0
	tr := tracker.New(family, nodeName, time.Time{}, func(kind string, obj types.NamespacedName, reason, detail string) {
		invalid++
		klog.InfoS("Skipping malformed part of object", "kind", kind, "object", obj, "reason", reason, "detail", detail)
	})
	// Only what the daemon's watches would deliver: render must not program a service
	// that a node leaves to another proxy, or one labelled headless.
	for _, svc := range objs.Services {
		if sources.ServiceSelected(svc) {
			tr.ServiceChanged(svc, false)
		}
	}
	for _, s := range objs.EndpointSlices {
		if sources.EndpointSliceSelected(s) {
			tr.EndpointSliceChanged(s, false)
		}
	}
	snap, _ := tr.Checkpoint()
	opts, err := RuleOptions(cfg, family, node, nodeIP)
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	// The node's own addresses stand in for its interfaces when node ports are limited.
	var localAddrs []netip.Addr
	for _, a := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && familyOf(ip) == family {
			localAddrs = append(localAddrs, ip)
		}
	}
	// Rendered for a node without any of kproxy's rules, as a full sync finds a fresh
	// node: the payload also inserts the jumps from the built-in chains.
	rs := rules.Render(rules.Request{Snapshot: snap, Node: proxierNode(node, nodeIP), LocalAddrs: localAddrs, Jumps: rules.ReadJumps(nil)}, opts)

	fmt.Fprintf(out, "# kproxy render: %s, %d service ports, %d filter + %d nat rules", family, len(snap.Services), rs.FilterRules, rs.NATRules)
	if nodeName != "" {
		fmt.Fprintf(out, ", node %s", nodeName)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "# As a full sync writes it on a node without kproxy's rules: the jumps from the built-in chains included.")
	if _, err := out.Write(rs.Payload()); err != nil {
		return fmt.Errorf("render: %w", err)
	}
	if invalid > 0 {
		fmt.Fprintf(errOut, "kproxy render: skipped %d malformed parts of objects (see log)\n", invalid)
	}
	return nil
}

// pickNode finds the node to render for: the one named, or the only Node manifest. No
// Node manifest is fine (the rules then know no node IP, zone or pod CIDR).
func pickNode(nodes []*v1.Node, name string) (*v1.Node, error) {
	if name == "" {
		if len(nodes) == 1 {
			return nodes[0], nil
		}
		return &v1.Node{}, nil
	}
	for _, n := range nodes {
		if n.Name == name {
			return n, nil
		}
	}
	if len(nodes) == 0 {
		return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, nil
	}
	return nil, fmt.Errorf("render: --node-name %q matches none of the Node manifests", name)
}
