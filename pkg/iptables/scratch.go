package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// SaveAsKernel returns payload as the kernel prints it: restored with backend's
// iptables-restore into a fresh, empty network namespace and read back with its
// iptables-save, one table after the other. The kernel's form differs from the text
// restored (matches reordered, /32 added, -m tcp implied, quoting), so comparing what
// kproxy means the node to hold with what it holds (`kproxy diagnose`) needs both in the
// kernel's form. The node's own namespace is never touched. Needs CAP_SYS_ADMIN. setup,
// if not nil, runs in the scratch namespace first: what the payload refers to that lives
// per namespace (nfacct counters) must exist there for the restore to pass.
func SaveAsKernel(ctx context.Context, family v1.IPFamily, backend Backend, payload []byte, setup func() error, tables ...string) ([]byte, error) {
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The thread leaves the process's namespace for good and is never unlocked, so
		// the Go runtime discards it when this goroutine ends instead of reusing it.
		runtime.LockOSThread()
		out, err := saveInNewNetNS(ctx, family, backend, payload, setup, tables)
		done <- result{out, err}
	}()
	r := <-done
	return r.out, r.err
}

// saveInNewNetNS runs on a locked OS thread; commands it starts inherit the thread's
// namespace.
func saveInNewNetNS(ctx context.Context, family v1.IPFamily, backend Backend, payload []byte, setup func() error, tables []string) ([]byte, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("creating a scratch network namespace: %w", err)
	}
	if setup != nil {
		if err := setup(); err != nil {
			return nil, fmt.Errorf("preparing the scratch network namespace: %w", err)
		}
	}
	ipt, err := New(family, backend, DefaultWait)
	if err != nil {
		return nil, err
	}
	if err := ipt.Restore(ctx, payload); err != nil {
		return nil, fmt.Errorf("restoring into a scratch network namespace: %w", err)
	}
	var out bytes.Buffer
	for _, table := range tables {
		save, err := ipt.Save(ctx, table)
		if err != nil {
			return nil, err
		}
		out.Write(save)
	}
	return out.Bytes(), nil
}

// saveAllTimeout bounds SaveAll: some iptables-nft releases could loop forever while
// listing (see DetectBackend), and the callers are diagnoses that must finish.
const saveAllTimeout = 10 * time.Second

// SaveAll returns every table family's backend holds, as iptables-save prints them, in
// the calling thread's network namespace. Unlike Interface.Save it names no table: the
// legacy backend creates a table it is asked for, and a diagnosis must change nothing.
func SaveAll(ctx context.Context, family v1.IPFamily, backend Backend) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, saveAllTimeout)
	defer cancel()
	name := BinaryName(family, backend, "save")
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name)
	// Keep stderr apart: iptables-nft-save warns there ("iptables-legacy tables
	// present") when it succeeds, and that is not save output.
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s: %w", name, ctxErr)
		}
		return nil, fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
