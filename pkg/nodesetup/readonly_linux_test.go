package nodesetup

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestApplyConntrackReadOnlySysfs makes the sys directory of a test root a
// read-only bind mount, inside a mount namespace private to one OS thread,
// and expects the hash size failure to be a *ReadOnlySysfsError returned
// after the remaining settings were applied. It needs root.
func TestApplyConntrackReadOnlySysfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: this test bind-mounts in a private mount namespace and must run as root")
	}
	start := with(kernelDefaults, nil)
	root := newRoot(t, start)
	ctx := testContext(t)
	cfg := kubeProxyDefaults
	cfg.TCPBeLiberal = true

	errc := make(chan error, 1)
	go func() {
		// The thread's mount namespace is never restored: the goroutine exits
		// with the thread still locked, and the runtime then discards the
		// thread instead of reusing it.
		runtime.LockOSThread()
		if err := readOnlyBind(filepath.Join(root, "sys")); err != nil {
			errc <- err
			return
		}
		errc <- ApplyConntrack(ctx, NewProcSysctl(root), root, cfg, 4)
	}()
	var err error
	select {
	case err = <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("ApplyConntrack did not return")
	}

	var ro *ReadOnlySysfsError
	if !errors.As(err, &ro) {
		t.Fatalf("ApplyConntrack = %v, want a *ReadOnlySysfsError", err)
	}
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("ApplyConntrack = %v, want it to wrap EROFS", err)
	}
	if ro.Path != filepath.Join(root, hashsizePath) {
		t.Errorf("ReadOnlySysfsError.Path = %s, want the hashsize file", ro.Path)
	}
	// Everything but the hash size was applied, the settings after it too.
	diffFiles(t, with(start, map[string]string{
		maxPath:         "131072",
		establishedPath: "86400",
		closeWaitPath:   "3600",
		beLiberalPath:   "1",
	}), readRoot(t, root))
}

// readOnlyBind moves the calling thread into a new mount namespace that
// does not propagate to the host's, and makes dir a read-only bind mount of
// itself there.
func readOnlyBind(dir string) error {
	if err := syscall.Unshare(syscall.CLONE_NEWNS); err != nil {
		return err
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return err
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		return err
	}
	return syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, "")
}
