package iptables

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	coreiptables "github.com/coreos/go-iptables/iptables"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// Backend is the kernel interface an iptables binary programs.
type Backend string

const (
	// BackendLegacy is the x_tables kernel interface (iptables-legacy*).
	BackendLegacy Backend = "legacy"
	// BackendNFT is the nf_tables kernel interface with iptables syntax
	// (iptables-nft*).
	BackendNFT Backend = "nft"
)

// DefaultWait is how long kube-proxy waits for the xtables lock ("-w 5").
const DefaultWait = 5 * time.Second

// Interface runs iptables commands for one IP family and backend. It holds no
// state between calls, so it is safe for concurrent use; the xtables lock
// (--wait) serialises the legacy backend against other programs.
type Interface interface {
	// Restore applies payload with "<family>tables-restore -w <wait> --noflush"
	// (payload on stdin, no --counters). The payload is the concatenation of
	// its pieces: a large sync hands over slices of the render's buffers
	// rather than join megabytes into one more copy. A failure the binary
	// attributes to a payload line is returned as a wrapped *ParseError; any
	// other failure with exit status 4 (lock wait expired, kernel busy) as a
	// wrapped *BusyError.
	Restore(ctx context.Context, payload ...[]byte) error
	// SaveChains lists the names of every chain of table, built-in chains
	// included, in iptables-save order (from "-save -t table"). It is used to
	// find stale chains.
	SaveChains(ctx context.Context, table string) ([]string, error)
	// Save returns table as "-save -t table" prints it.
	Save(ctx context.Context, table string) ([]byte, error)
	// SaveTo writes table as "-save -t table" prints it to w as the binary
	// prints it, to compare the rules the kernel holds with those kproxy wrote
	// (drift) without holding the table: at 10k services the nat table is
	// 18 MB, read every sync period.
	SaveTo(ctx context.Context, table string, w io.Writer) error
	// EnsureChain creates chain in table unless it already exists.
	EnsureChain(ctx context.Context, table, chain string) error
	// ChainExists reports whether chain exists in table ("-S chain 1"). An
	// error means the answer is unknown, not that the chain is missing; when
	// the lock or a kernel resource was busy the error wraps a *BusyError.
	ChainExists(ctx context.Context, table, chain string) (bool, error)
	// RuleExists reports whether the rule is in chain (-C). Errors as for
	// ChainExists.
	RuleExists(ctx context.Context, table, chain string, args ...string) (bool, error)
	// DeleteRule deletes the rule; a missing rule or chain is not an error.
	DeleteRule(ctx context.Context, table, chain string, args ...string) error
	// Family is the IP family this instance programs.
	Family() v1.IPFamily
	// Backend is the backend this instance programs.
	Backend() Backend
}

// runner is the real Interface.
type runner struct {
	family  v1.IPFamily
	backend Backend
	// waitArg is the --wait value for restore, in whole seconds.
	waitArg string
	// restorePath and savePath are resolved once in New so that a missing
	// binary is reported at startup rather than at the first sync.
	restorePath string
	savePath    string
	ipt         *coreiptables.IPTables
}

var _ Interface = (*runner)(nil)

// BinaryName returns the name of the family's and backend's binary for tool,
// which is "" (the plain iptables command), "restore" or "save": for example
// ip6tables-nft-restore.
func BinaryName(family v1.IPFamily, backend Backend, tool string) string {
	prefix := "iptables"
	if family == v1.IPv6Protocol {
		prefix = "ip6tables"
	}
	name := prefix + "-" + string(backend)
	if tool != "" {
		name += "-" + tool
	}
	return name
}

// New returns the Interface for family (IPv4 or IPv6) and backend (legacy or
// nft). wait is the xtables lock timeout given to every command; it is rounded
// up to whole seconds and must be at least one second, because the house rule
// is that every command waits for the lock instead of failing at once.
// A binary missing from $PATH is an error that wraps exec.ErrNotFound.
func New(family v1.IPFamily, backend Backend, wait time.Duration) (Interface, error) {
	if family != v1.IPv4Protocol && family != v1.IPv6Protocol {
		return nil, fmt.Errorf("iptables: unsupported IP family %q", family)
	}
	if backend != BackendLegacy && backend != BackendNFT {
		return nil, fmt.Errorf("iptables: unsupported backend %q (want %q or %q)", backend, BackendLegacy, BackendNFT)
	}
	if wait < time.Second {
		return nil, fmt.Errorf("iptables: lock wait %v is shorter than one second", wait)
	}
	secs := int((wait + time.Second - 1) / time.Second)

	r := &runner{family: family, backend: backend, waitArg: strconv.Itoa(secs)}
	paths := make(map[string]string, 3)
	for _, tool := range []string{"", "restore", "save"} {
		name := BinaryName(family, backend, tool)
		p, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("iptables: looking up %s: %w", name, err)
		}
		paths[tool] = p
	}
	r.restorePath, r.savePath = paths["restore"], paths["save"]

	proto := coreiptables.ProtocolIPv4
	if family == v1.IPv6Protocol {
		proto = coreiptables.ProtocolIPv6
	}
	// go-iptables runs "<path> --version" here to learn which flags the binary
	// supports; with an explicit Path it never consults the alternatives link.
	ipt, err := coreiptables.New(coreiptables.Path(paths[""]), coreiptables.IPFamily(proto), coreiptables.Timeout(secs))
	if err != nil {
		return nil, fmt.Errorf("iptables: initialising %s: %w", paths[""], err)
	}
	r.ipt = ipt
	return r, nil
}

func (r *runner) Family() v1.IPFamily { return r.family }
func (r *runner) Backend() Backend    { return r.backend }

func (r *runner) Restore(ctx context.Context, payload ...[]byte) error {
	args := []string{"-w", r.waitArg, "--noflush"}
	cmdLine := r.restorePath + " " + strings.Join(args, " ")
	cmd := exec.CommandContext(ctx, r.restorePath, args...)
	pieces := net.Buffers(slices.Clone(payload))
	size := 0
	for _, p := range payload {
		size += len(p)
	}
	// Only Read is exposed: exec copies stdin with io.Copy, which would otherwise use
	// net.Buffers' WriteTo and make one write to the pipe per piece (tens of thousands
	// for a large sync) instead of one per 32 KiB.
	cmd.Stdin = struct{ io.Reader }{&pieces}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	klog.FromContext(ctx).V(4).Info("Ran iptables-restore", "cmd", cmdLine, "bytes", size, "elapsed", time.Since(start), "err", err)
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		// The binary was killed; whatever it printed is not its verdict.
		return fmt.Errorf("%s: %w", cmdLine, ctxErr)
	}
	output := strings.TrimSpace(string(out))
	if line, ok := failedLine(output); ok {
		return fmt.Errorf("iptables restore failed: %w", &ParseError{Line: line, Output: output, Cmd: cmdLine, Err: err})
	}
	return fmt.Errorf("%s: %w: %s", cmdLine, classify(err), output)
}

func (r *runner) SaveChains(ctx context.Context, table string) ([]string, error) {
	save, err := r.Save(ctx, table)
	if err != nil {
		return nil, err
	}
	return ParseChains(save), nil
}

func (r *runner) Save(ctx context.Context, table string) ([]byte, error) {
	var stdout bytes.Buffer
	if err := r.SaveTo(ctx, table, &stdout); err != nil {
		return nil, err
	}
	return stdout.Bytes(), nil
}

func (r *runner) SaveTo(ctx context.Context, table string, w io.Writer) error {
	cmd := exec.CommandContext(ctx, r.savePath, "-t", table)
	// Keep stderr apart: iptables-nft-save warns there ("iptables-legacy
	// tables present") even when it succeeds, and that is not save output.
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("%s -t %s: %w", r.savePath, table, ctxErr)
		}
		return fmt.Errorf("%s -t %s: %w: %s", r.savePath, table, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// ParseChains returns the chain names declared (":NAME POLICY [p:b]") in
// iptables-save output, in order.
func ParseChains(save []byte) []string {
	var chains []string
	sc := bufio.NewScanner(bytes.NewReader(save))
	// Chain lines are short but rule lines may be long; give the scanner room
	// so that a long rule does not end the scan early.
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) < 2 || line[0] != ':' {
			continue
		}
		name, _, _ := bytes.Cut(line[1:], []byte{' '})
		chains = append(chains, string(name))
	}
	return chains
}

// checkCtx is called before every go-iptables call: go-iptables takes no
// context, so cancellation is honoured between commands, and each command is
// bounded by the lock wait.
func checkCtx(ctx context.Context, what string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("iptables %s: %w", what, err)
	}
	return nil
}

func (r *runner) EnsureChain(ctx context.Context, table, chain string) error {
	if err := checkCtx(ctx, "ensure chain"); err != nil {
		return err
	}
	// Check first: after the first sync the chain nearly always exists, and
	// checking is one exec where "-N, then check on failure" would be two.
	exists, err := r.ipt.ChainExists(table, chain)
	if err != nil {
		return fmt.Errorf("checking chain %s in table %s: %w", chain, table, classify(err))
	}
	if exists {
		return nil
	}
	if err := r.ipt.NewChain(table, chain); err != nil {
		// Another program may have created it between the check and -N.
		if exists, cerr := r.ipt.ChainExists(table, chain); cerr == nil && exists {
			return nil
		}
		return fmt.Errorf("creating chain %s in table %s: %w", chain, table, classify(err))
	}
	klog.FromContext(ctx).V(4).Info("Created chain", "backend", r.backend, "table", table, "chain", chain)
	return nil
}

func (r *runner) DeleteRule(ctx context.Context, table, chain string, args ...string) error {
	if err := checkCtx(ctx, "delete rule"); err != nil {
		return err
	}
	// One exec: -D and read "not there" from the error, instead of -C then -D.
	err := r.ipt.Delete(table, chain, args...)
	if err == nil {
		klog.FromContext(ctx).V(4).Info("Deleted rule", "backend", r.backend, "table", table, "chain", chain, "args", args)
		return nil
	}
	// Both backends answer exit status 1 with "Bad rule (does a matching rule
	// exist in that chain?)" for a missing rule, and legacy with "No
	// chain/target/match by that name" for a missing chain; go-iptables knows
	// these messages.
	var ierr *coreiptables.Error
	if errors.As(err, &ierr) && ierr.IsNotExist() {
		return nil
	}
	return fmt.Errorf("deleting rule from chain %s of table %s: %w", chain, table, classify(err))
}

func (r *runner) RuleExists(ctx context.Context, table, chain string, args ...string) (bool, error) {
	if err := checkCtx(ctx, "rule exists"); err != nil {
		return false, err
	}
	exists, err := r.ipt.Exists(table, chain, args...)
	if err != nil {
		return false, fmt.Errorf("checking rule in chain %s of table %s: %w", chain, table, classify(err))
	}
	return exists, nil
}

func (r *runner) ChainExists(ctx context.Context, table, chain string) (bool, error) {
	if err := checkCtx(ctx, "chain exists"); err != nil {
		return false, err
	}
	// go-iptables lists at most the first rule ("-S chain 1"), so the check
	// costs the same for a long chain as for an empty one, and it reads exit
	// status 1 as "no such chain".
	exists, err := r.ipt.ChainExists(table, chain)
	if err != nil {
		return false, fmt.Errorf("checking chain %s in table %s: %w", chain, table, classify(err))
	}
	return exists, nil
}
