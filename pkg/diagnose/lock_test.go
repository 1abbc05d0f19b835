package diagnose

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestXTablesLockPath(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if got := XTablesLockPath(getenv); got != "/run/xtables.lock" {
		t.Errorf("without XTABLES_LOCKFILE: %q, want /run/xtables.lock", got)
	}
	env["XTABLES_LOCKFILE"] = "/var/run/other.lock"
	if got := XTablesLockPath(getenv); got != "/var/run/other.lock" {
		t.Errorf("with XTABLES_LOCKFILE: %q, want /var/run/other.lock", got)
	}
}

func TestParseLocks(t *testing.T) {
	// As the kernel prints them: flock, POSIX and OFD locks, a waiter, a lock
	// without an inode, and the same inode on another device.
	locks := []byte(`1: POSIX  ADVISORY  WRITE 812 00:19:1049 0 EOF
2: FLOCK  ADVISORY  WRITE 2331 00:1a:1049 0 EOF
2: -> FLOCK  ADVISORY  WRITE 2400 00:1a:1049 0 EOF
2: -> FLOCK  ADVISORY  WRITE 2401 00:1a:1049 0 EOF
3: OFDLCK ADVISORY  READ  -1 fd:01:1049 0 EOF
4: LEASE  ACTIVE    READ  99 00:1a:77 0 EOF
5: FLOCK  ADVISORY  WRITE 0 00:1a:1049 0 EOF
6: DELEG  ACTIVE    READ  1 <none>:0 0 EOF
garbage
`)
	holders, waiters := parseLocks(locks, 0, 0x1a, 1049)
	if want := []int{2331, 0}; !slices.Equal(holders, want) {
		t.Errorf("holders %v, want %v", holders, want)
	}
	if want := []int{2400, 2401}; !slices.Equal(waiters, want) {
		t.Errorf("waiters %v, want %v", waiters, want)
	}
	if holders, _ := parseLocks(locks, 0xfd, 1, 1049); !slices.Equal(holders, []int{-1}) {
		t.Errorf("holders on fd:01 %v, want [-1]", holders)
	}
	if holders, waiters := parseLocks(locks, 8, 1, 1049); holders != nil || waiters != nil {
		t.Errorf("another device: holders %v, waiters %v, want none", holders, waiters)
	}
}

func TestProcessString(t *testing.T) {
	for p, want := range map[Process]string{
		{PID: 12, Command: "iptables -w 5 -A X"}: "PID 12 (iptables -w 5 -A X)",
		{PID: 12}:                                "PID 12",
		{PID: 0}:                                 "a process outside this PID namespace",
		{PID: -1, Command: "ignored"}:            "a process outside this PID namespace",
	} {
		if got := p.String(); got != want {
			t.Errorf("%#v: %q, want %q", p, got, want)
		}
	}
	for p, want := range map[Process]string{
		{PID: 12, Command: "/usr/sbin/iptables-restore -w 5"}: "PID 12 (iptables-restore)",
		{PID: 12}:                    "PID 12",
		{PID: 0, Command: "ignored"}: "a process outside this PID namespace",
	} {
		if got := p.short(); got != want {
			t.Errorf("%#v short: %q, want %q", p, got, want)
		}
	}
}

// holdLock opens path (creating it) and takes an exclusive flock on it, as
// iptables-legacy does, on a file description of its own: flock conflicts between
// open file descriptions even within one process, so the probe sees it held.
func holdLock(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatalf("flock %s: %v", path, err)
	}
	return f
}

// TestXTablesLockProbe probes a real lock file: flock needs no privileges.
func TestXTablesLockProbe(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	t.Run("no lock file", func(t *testing.T) {
		path := filepath.Join(dir, "missing.lock")
		st, err := XTablesLock{Path: path, Wait: time.Second}.Probe(ctx)
		if err != nil || st.Exists || st.Held {
			t.Errorf("Probe = %+v, %v; want a missing, free lock", st, err)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the probe created the lock file: %v", err)
		}
	})

	t.Run("free", func(t *testing.T) {
		path := filepath.Join(dir, "free.lock")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := XTablesLock{Path: path, Wait: time.Second}.Probe(ctx)
		if err != nil || !st.Exists || st.Held || st.Waited != 0 || st.Holders != nil {
			t.Errorf("Probe = %+v, %v; want an existing free lock", st, err)
		}
		// The probe let go of it.
		holdLock(t, path)
	})

	t.Run("held", func(t *testing.T) {
		path := filepath.Join(dir, "held.lock")
		holdLock(t, path)
		start := time.Now()
		st, err := XTablesLock{Path: path, Wait: 200 * time.Millisecond}.Probe(ctx)
		if err != nil || !st.Exists || !st.Held {
			t.Fatalf("Probe = %+v, %v; want a held lock", st, err)
		}
		if elapsed := time.Since(start); st.Waited < 200*time.Millisecond || elapsed > 5*time.Second {
			t.Errorf("waited %v (probe took %v), want at least the 200ms wait", st.Waited, elapsed)
		}
		if len(st.Holders) != 1 || st.Holders[0].PID != os.Getpid() || !strings.HasPrefix(st.Holders[0].Command, os.Args[0]) {
			t.Errorf("holders %+v, want this test process (PID %d)", st.Holders, os.Getpid())
		}
		f := lockFinding(st, nil, "")
		checkFinding(t, f, Problem, "held by PID", path+": still held after", "find why PID")
	})

	t.Run("released during the wait", func(t *testing.T) {
		path := filepath.Join(dir, "released.lock")
		fd := int(holdLock(t, path).Fd())
		released := make(chan error, 1)
		time.AfterFunc(150*time.Millisecond, func() { released <- unix.Flock(fd, unix.LOCK_UN) })
		st, err := XTablesLock{Path: path, Wait: 10 * time.Second}.Probe(ctx)
		if err := <-released; err != nil {
			t.Fatalf("releasing the lock: %v", err)
		}
		if err != nil || st.Held || st.Waited < 100*time.Millisecond || st.Waited > 5*time.Second {
			t.Errorf("Probe = %+v, %v; want the lock got after about 150ms", st, err)
		}
		if len(st.Holders) != 1 {
			t.Errorf("holders %+v, want the one that held it at first", st.Holders)
		}
		checkFinding(t, lockFinding(st, nil, ""), OK, "xtables lock is free", "taken, free after", "")
	})

	t.Run("context cancelled", func(t *testing.T) {
		path := filepath.Join(dir, "cancelled.lock")
		holdLock(t, path)
		ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if _, err := (XTablesLock{Path: path, Wait: time.Minute}).Probe(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Probe = %v, want the context's error", err)
		}
	})
}
