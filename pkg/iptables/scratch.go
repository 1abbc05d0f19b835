package iptables

import (
	"bytes"
	"context"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// SaveAsKernel returns payload as the kernel prints it: restored with backend's
// iptables-restore into a fresh, empty network namespace and read back with its
// iptables-save, one table after the other. The kernel's form differs from the text
// restored (matches reordered, /32 added, -m tcp implied, quoting), so comparing what
// kproxy means the node to hold with what it holds (`kproxy diagnose`) needs both in the
// kernel's form. The node's own namespace is never touched. Needs CAP_SYS_ADMIN.
func SaveAsKernel(ctx context.Context, family v1.IPFamily, backend Backend, payload []byte, tables ...string) ([]byte, error) {
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The thread leaves the process's namespace for good and is never unlocked, so
		// the Go runtime discards it when this goroutine ends instead of reusing it.
		runtime.LockOSThread()
		out, err := saveInNewNetNS(ctx, family, backend, payload, tables)
		done <- result{out, err}
	}()
	r := <-done
	return r.out, r.err
}

// saveInNewNetNS runs on a locked OS thread; commands it starts inherit the thread's
// namespace.
func saveInNewNetNS(ctx context.Context, family v1.IPFamily, backend Backend, payload []byte, tables []string) ([]byte, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("creating a scratch network namespace: %w", err)
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
