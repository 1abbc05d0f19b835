package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// node is the kernel side of the node the daemons run on: what the benchmark reads and
// resets there, always from outside the daemon.
type node struct {
	netns   string
	backend iptables.Backend
	// lock is the node's xtables lock file (XTABLES_LOCKFILE), the daemons' own.
	lock string
	// legacy reads the legacy nat table straight from the kernel; nil on nft.
	legacy *legacyNAT
}

func newNode(netns string, backend iptables.Backend, lock string) (*node, error) {
	n := &node{netns: netns, backend: backend, lock: lock}
	if backend == iptables.BackendLegacy {
		var err error
		if n.legacy, err = openLegacyNAT(netns); err != nil {
			return nil, err
		}
	}
	return n, nil
}

func (n *node) close() {
	if n.legacy != nil {
		n.legacy.close()
	}
}

// present takes one look at the node's nat table and tells which of chains exist: one
// copy of the whole table out of the kernel on legacy, one list of its chains on nft, so
// that all the changes one sync programmed are seen at once.
func (n *node) present(ctx context.Context, chains []string) (map[string]bool, error) {
	want := make(map[string]bool, len(chains))
	for _, c := range chains {
		want[c] = false
	}
	if n.legacy == nil {
		return want, nftNATChains(n.netns, want)
	}
	v, err := n.legacy.view()
	if err != nil {
		return nil, err
	}
	return want, v.present(want)
}

// serviceProgrammed reports whether the service whose KUBE-SVC chain is svcChain is
// reachable: nat KUBE-SERVICES jumps to its chain. The jump is what counts, not the
// chain: a daemon may commit a large sync in several transactions (kproxy does on nft:
// services' chains first, the dispatch rules last), and upstream removes a deleted
// service's jump at once but its chains only every sync period in large clusters.
func (n *node) serviceProgrammed(ctx context.Context, svcChain string) (bool, error) {
	if n.legacy != nil {
		v, err := n.legacy.view()
		if err != nil {
			return false, err
		}
		return v.jumps("KUBE-SERVICES", svcChain)
	}
	// Listing KUBE-SERVICES ("iptables-nft -S", 0.2 s at 10k services) only once the
	// chain exists.
	found, err := n.present(ctx, []string{svcChain})
	if err != nil || !found[svcChain] {
		return false, err
	}
	out, found2, err := n.iptables(ctx, "-t", "nat", "-S", "KUBE-SERVICES")
	if err != nil || !found2 {
		return false, err
	}
	return strings.Contains(out+"\n", " -j "+svcChain+"\n"), nil
}

// iptables runs the backend's iptables in the node's namespace, with the node's lock. A
// missing chain or table (exit status 1) is found false, not an error.
func (n *node) iptables(ctx context.Context, args ...string) (out string, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	bin := iptables.BinaryName(v1.IPv4Protocol, n.backend, "")
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.netns, bin}, args...)...)
	cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+n.lock)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("%s %s in %s: %w: %s", bin, strings.Join(args, " "), n.netns, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), true, nil
}

// flush empties the filter, nat and mangle tables of both backends in the node's
// namespace, so that each daemon starts on a node without rules, as after a reboot.
func (n *node) flush(ctx context.Context) error {
	const empty = "*filter\nCOMMIT\n*nat\nCOMMIT\n*mangle\nCOMMIT\n"
	for _, b := range []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT} {
		bin := iptables.BinaryName(v1.IPv4Protocol, b, "restore")
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.netns, bin, "-w", "5")
		cmd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+n.lock)
		cmd.Stdin = strings.NewReader(empty)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("flushing %s in %s: %w: %s", bin, n.netns, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// save is iptables-save of every table of the node's backend: the ruleset a daemon left,
// in the form a bare restore reads. Only stdout: iptables-nft-save warns on stderr about
// legacy tables.
func (n *node) save(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	bin := iptables.BinaryName(v1.IPv4Protocol, n.backend, "save")
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.netns, bin)
	var stderr measure.Tail
	stderr.Max = 4 << 10
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w: %s", bin, n.netns, err, stderr.String())
	}
	return out, nil
}

// legacyView is one copy of the legacy nat table's entries. It shares its memory with
// the next copy: ask it before looking again.
type legacyView struct {
	blob []byte
	// hooks are the offsets where the built-in chains start.
	hooks []int
}

// walk calls fn for every entry with the user-defined chain it belongs to ("" in a
// built-in chain), its offset and size, its target's name and data. A user-defined chain
// starts with an entry whose ERROR target holds the chain's name; a built-in one at a hook
// offset.
func (v legacyView) walk(fn func(chain []byte, off, size int, target, data []byte) bool) error {
	var chain []byte
	for off := 0; off < len(v.blob); {
		if off+entryNextOffsetAt+2 > len(v.blob) {
			return fmt.Errorf("legacy nat table: truncated entry at offset %d", off)
		}
		e := v.blob[off:]
		next := int(binary.NativeEndian.Uint16(e[entryNextOffsetAt:]))
		tgt := int(binary.NativeEndian.Uint16(e[entryTargetOffsetAt:]))
		if next <= 0 || off+next > len(v.blob) || tgt+targetDataAt > next {
			return fmt.Errorf("legacy nat table: malformed entry at offset %d", off)
		}
		if off+next == len(v.blob) {
			return nil // the table's terminating entry, an ERROR target named "ERROR"
		}
		if slices.Contains(v.hooks, off) {
			chain = nil
		}
		target := e[tgt:next]
		name, data := cstring(target[targetNameAt:targetNameAt+xtNameLen]), target[targetDataAt:]
		if bytes.Equal(name, errorTarget) {
			chain = cstring(data)
		}
		if !fn(chain, off, next, name, data) {
			return nil
		}
		off += next
	}
	return nil
}

// present sets want[chain] for every chain of want that an ERROR entry heads (one walk,
// about a millisecond at 10k x 5).
func (v legacyView) present(want map[string]bool) error {
	return v.walk(func(_ []byte, _, _ int, name, data []byte) bool {
		if bytes.Equal(name, errorTarget) {
			if _, ok := want[string(cstring(data))]; ok {
				want[string(cstring(data))] = true
			}
		}
		return true
	})
}

// jumps looks for a standard target in chain from whose verdict is the offset of chain
// to's first rule, which is right after the entry that heads it (libiptc compiles jumps
// so, and the kernel keeps the offsets).
func (v legacyView) jumps(from, to string) (bool, error) {
	fromB, toB := []byte(from), []byte(to)
	start := -1
	var verdicts []int
	err := v.walk(func(chain []byte, off, size int, name, data []byte) bool {
		switch {
		case bytes.Equal(name, errorTarget) && bytes.Equal(cstring(data), toB):
			start = off + size
		case len(name) == 0 && bytes.Equal(chain, fromB) && len(data) >= 4:
			verdicts = append(verdicts, int(int32(binary.NativeEndian.Uint32(data))))
		}
		return true
	})
	return start >= 0 && slices.Contains(verdicts, start), err
}

var errorTarget = []byte("ERROR")

func cstring(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// legacyNAT reads the legacy nat table of one namespace the way iptables-legacy-save gets
// it, with the IPT_SO_GET_INFO and IPT_SO_GET_ENTRIES socket options, and lists its chains
// without the text conversion: at 10k x 5 one look takes 70-100 ms where
// "iptables-legacy -t nat -S CHAIN" takes 0.9 s of CPU, which would both blur the times
// measured and take a core from the daemon under test.
type legacyNAT struct {
	fd  int
	buf []byte
}

// From <linux/netfilter_ipv4/ip_tables.h> and <linux/netfilter/x_tables.h> (amd64 and
// arm64 layouts).
const (
	iptSoGetInfo    = 64 // IPT_SO_GET_INFO
	iptSoGetEntries = 65 // IPT_SO_GET_ENTRIES
	// sizeof(struct ipt_getinfo): name[32], valid_hooks, hook_entry[5], underflow[5],
	// num_entries, size.
	getInfoLen          = 84
	getInfoValidHooksAt = 32
	getInfoHookEntryAt  = 36
	getInfoSizeAt       = 80
	numHooks            = 5 // NF_INET_NUMHOOKS
	// sizeof(struct ipt_get_entries): name[32], size, then the entries, 8-byte aligned.
	getEntriesHdr = 40
	// struct ipt_entry: struct ipt_ip (84 bytes), nfcache, target_offset, next_offset.
	entryTargetOffsetAt = 88
	entryNextOffsetAt   = 90
	// struct xt_entry_target: target_size (u16), name[29], revision; then the data, which
	// for the ERROR target that heads a user-defined chain is the chain's name.
	targetNameAt = 2
	targetDataAt = 32
	xtNameLen    = 29
)

// openLegacyNAT opens a raw socket in the namespace: the namespace of a socket is fixed
// when it is created, so the socket reads that namespace's tables from any thread.
func openLegacyNAT(netns string) (*legacyNAT, error) {
	t := &legacyNAT{fd: -1}
	err := netnstest.Do(netns, func() error {
		var err error
		t.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("raw socket in %s: %w", netns, err)
	}
	return t, nil
}

func (t *legacyNAT) close() { _ = unix.Close(t.fd) }

// view reads the table now.
func (t *legacyNAT) view() (legacyView, error) {
	blob, hooks, err := t.read()
	return legacyView{blob: blob, hooks: hooks}, err
}

// read copies the nat table's entries out of the kernel, into memory the next read
// reuses; empty when the namespace has no legacy nat table yet.
func (t *legacyNAT) read() (blob []byte, hooks []int, err error) {
	for range 10 {
		info := make([]byte, getInfoLen)
		copy(info, "nat")
		if err := t.getsockopt(iptSoGetInfo, info); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil, nil, nil
			}
			return nil, nil, fmt.Errorf("IPT_SO_GET_INFO nat: %w", err)
		}
		valid := binary.NativeEndian.Uint32(info[getInfoValidHooksAt:])
		hooks = hooks[:0]
		for h := range numHooks {
			if valid&(1<<h) != 0 {
				hooks = append(hooks, int(binary.NativeEndian.Uint32(info[getInfoHookEntryAt+4*h:])))
			}
		}
		size := binary.NativeEndian.Uint32(info[getInfoSizeAt:])
		n := getEntriesHdr + int(size)
		if cap(t.buf) < n {
			t.buf = make([]byte, n)
		}
		buf := t.buf[:n]
		clear(buf[:getEntriesHdr])
		copy(buf, "nat")
		binary.NativeEndian.PutUint32(buf[32:], size)
		err := t.getsockopt(iptSoGetEntries, buf)
		if errors.Is(err, unix.EAGAIN) {
			continue // the table was replaced between the two calls
		}
		if err != nil {
			return nil, nil, fmt.Errorf("IPT_SO_GET_ENTRIES nat (%d bytes): %w", size, err)
		}
		return buf[getEntriesHdr:], hooks, nil
	}
	return nil, nil, errors.New("IPT_SO_GET_ENTRIES nat: the table kept changing")
}

func (t *legacyNAT) getsockopt(opt int, buf []byte) error {
	l := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(t.fd), unix.IPPROTO_IP, uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// From <linux/netfilter/nfnetlink.h> and <linux/netfilter/nf_tables.h>.
const (
	nfnlSubsysNFTables = 10
	nftMsgNewChain     = 3
	nftMsgGetChain     = 4
	nftaChainTable     = 1
	nftaChainName      = 3
)

// nftNATChains sets want[chain] for every chain of want that the nft table "ip nat" of
// the namespace holds, from one NFT_MSG_GETCHAIN dump (as "nft list chains" does it). A
// dump that a commit interrupted says nothing: the ruleset is changing (kproxy commits a
// large sync in many transactions), so the caller looks again later.
func nftNATChains(netns string, want map[string]bool) error {
	err := netnstest.Do(netns, func() error {
		req := nl.NewNetlinkRequest(nfnlSubsysNFTables<<8|nftMsgGetChain, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
		req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0})
		return req.ExecuteIter(unix.NETLINK_NETFILTER, nfnlSubsysNFTables<<8|nftMsgNewChain, func(msg []byte) bool {
			if len(msg) < nl.SizeofNfgenmsg {
				return true
			}
			var table, name []byte
			for attrs := msg[nl.SizeofNfgenmsg:]; len(attrs) >= 4; {
				l := int(binary.NativeEndian.Uint16(attrs))
				typ := binary.NativeEndian.Uint16(attrs[2:]) & nl.NLA_TYPE_MASK
				if l < 4 || l > len(attrs) {
					break
				}
				switch typ {
				case nftaChainTable:
					table = cstring(attrs[4:l])
				case nftaChainName:
					name = cstring(attrs[4:l])
				}
				attrs = attrs[min(len(attrs), (l+3)&^3):]
			}
			if _, ok := want[string(name)]; ok && string(table) == "nat" {
				want[string(name)] = true
			}
			return true
		})
	})
	if errors.Is(err, nl.ErrDumpInterrupted) {
		for c := range want {
			want[c] = false
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing the nft chains of %s: %w", netns, err)
	}
	return nil
}
