package measure

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// Namespaces hands out fresh network namespaces named PREFIX-N and deletes them; Cleanup
// deletes any still alive (after an error or a signal).
type Namespaces struct {
	prefix string

	mu   sync.Mutex
	n    int
	live map[string]bool
}

// NewNamespaces returns a source of namespaces named prefix-1, prefix-2, ...
func NewNamespaces(prefix string) *Namespaces {
	return &Namespaces{prefix: prefix, live: map[string]bool{}}
}

// With runs fn with the name of a fresh network namespace, deleted afterwards.
func (s *Namespaces) With(fn func(ns string) error) error {
	s.mu.Lock()
	s.n++
	name := fmt.Sprintf("%s-%d", s.prefix, s.n)
	s.mu.Unlock()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	s.mu.Lock()
	s.live[name] = true
	s.mu.Unlock()
	err := fn(name)
	return errors.Join(err, s.delete(name))
}

func (s *Namespaces) delete(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.live[name] {
		return nil
	}
	delete(s.live, name)
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// Cleanup deletes every namespace still alive. Processes must have been killed with their
// process group before, so that nothing keeps a namespace (or its rules) alive.
func (s *Namespaces) Cleanup() error {
	s.mu.Lock()
	var names []string
	for n := range s.live {
		names = append(names, n)
	}
	s.mu.Unlock()
	var errs []error
	for _, n := range names {
		errs = append(errs, s.delete(n))
	}
	return errors.Join(errs...)
}

// ParseBackends parses "legacy,nft".
func ParseBackends(s string) ([]iptables.Backend, error) {
	var out []iptables.Backend
	for _, f := range strings.Split(s, ",") {
		b := iptables.Backend(strings.TrimSpace(f))
		if b != iptables.BackendLegacy && b != iptables.BackendNFT {
			return nil, fmt.Errorf("bad backend %q: want legacy or nft", f)
		}
		out = append(out, b)
	}
	return out, nil
}

// CPUTimes splits an operation's CPU time between the benchmark (or kproxy) itself and
// the iptables binaries it ran.
type CPUTimes struct {
	SelfUser     float64 `json:"selfUser"`
	SelfSys      float64 `json:"selfSys"`
	BinariesUser float64 `json:"binariesUser"`
	BinariesSys  float64 `json:"binariesSys"`
}

// Restore times one "iptables-<backend>-restore -w 5 args..." of stdin in namespace ns,
// under b.
func Restore(ctx context.Context, ns string, backend iptables.Backend, stdin io.Reader, b Bound, args ...string) (Timing, CPUTimes) {
	bin, err := exec.LookPath(iptables.BinaryName(v1.IPv4Protocol, backend, "restore"))
	if err != nil {
		return Timing{Err: err.Error()}, CPUTimes{}
	}
	var cmd *exec.Cmd
	out := &Tail{Max: 4 << 10}
	m := Timed(ctx, b, func(ctx context.Context) error {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, bin, "-w", "5"}, args...)...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, out, out
		InOwnGroup(cmd, false)
		err := cmd.Run()
		KillGroup(cmd)
		if err != nil {
			return fmt.Errorf("%s: %w: %s", bin, err, out)
		}
		return nil
	})
	var cpu CPUTimes
	if cmd != nil && cmd.ProcessState != nil {
		cpu.BinariesUser = cmd.ProcessState.UserTime().Seconds()
		cpu.BinariesSys = cmd.ProcessState.SystemTime().Seconds()
	}
	return m, cpu
}

// RestoreFloor times n restores (--noflush) of one new chain holding one rule into
// namespace ns, which holds a full ruleset: the least any partial sync can cost on this
// backend at this size (the legacy backend, for one, reads and replaces the whole table on
// every commit). Each probe adds a chain of its own, so none repeats another.
func RestoreFloor(ctx context.Context, ns string, backend iptables.Backend, n int, b Bound) []Timing {
	var ms []Timing
	for k := range n {
		chain := fmt.Sprintf("KBENCH-PROBE-%d", k)
		probe := fmt.Sprintf("*nat\n:%s - [0:0]\n-A %s -j RETURN\nCOMMIT\n", chain, chain)
		m, _ := Restore(ctx, ns, backend, strings.NewReader(probe), b, "--noflush")
		ms = append(ms, m)
		if !m.OK() {
			break
		}
	}
	return ms
}
