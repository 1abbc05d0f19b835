package framework

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// XTablesLock is node's xtables lock file: every node has its own (kproxy and the iptables
// commands of IPTables get it through XTABLES_LOCKFILE), so holding it (flock) blocks that
// node's legacy iptables only. iptables-nft takes no lock: lock tests need Backend "legacy".
func (c *Cluster) XTablesLock(node string) string {
	return filepath.Join(c.StateDir, node, "xtables.lock")
}

// IPTables runs iptables (of kproxy's backend) with args in node's namespace, with the
// node's xtables lock, and returns its combined output.
func (c *Cluster) IPTables(ctx context.Context, node string, args ...string) (string, error) {
	return c.nodeCommand(ctx, node, "iptables", args...)
}

// IPTablesSave returns iptables-save's output for table (of kproxy's backend) on node.
func (c *Cluster) IPTablesSave(ctx context.Context, node, table string) (string, error) {
	return c.nodeCommand(ctx, node, "iptables-save", "-t", table)
}

func (c *Cluster) nodeCommand(ctx context.Context, node, cmd string, args ...string) (string, error) {
	switch c.KProxyBackend {
	case "legacy", "nft": // iptables-nft, iptables-nft-save, ...
		cmd = strings.Replace(cmd, "iptables", "iptables-"+c.KProxyBackend, 1)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	full := append([]string{"netns", "exec", c.Node(node).NetNS, cmd}, args...)
	ec := exec.CommandContext(ctx, "ip", full...)
	ec.Env = append(os.Environ(), "XTABLES_LOCKFILE="+c.XTablesLock(node))
	out, err := ec.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s on %s: %w: %s", cmd, strings.Join(args, " "), node, err, out)
	}
	return string(out), nil
}
