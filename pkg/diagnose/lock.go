package diagnose

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// DefaultXTablesLock is the lock file iptables-legacy commands take when
// XTABLES_LOCKFILE is not set.
const DefaultXTablesLock = "/run/xtables.lock"

// XTablesLockPath returns the lock file that iptables commands started with the
// environment getenv (os.Getenv) take: $XTABLES_LOCKFILE, else DefaultXTablesLock.
func XTablesLockPath(getenv func(string) string) string {
	if p := getenv("XTABLES_LOCKFILE"); p != "" {
		return p
	}
	return DefaultXTablesLock
}

// LockProber finds out whether another process holds the xtables lock.
type LockProber interface {
	// Probe looks at the lock; an error means it could not tell.
	Probe(ctx context.Context) (LockState, error)
}

// LockState is what a probe of the xtables lock found.
type LockState struct {
	// Path is the lock file.
	Path string
	// Exists is false when there is no lock file, so nothing holds it: iptables
	// creates it on first use, on a tmpfs that a reboot empties.
	Exists bool
	// Held is true when the lock stayed held for the whole probe.
	Held bool
	// Waited is how long the probe tried before it got the lock (Held false) or
	// gave up (Held true); zero when the lock was free at once.
	Waited time.Duration
	// Holders are the processes /proc/locks showed holding the lock when the probe
	// first found it taken, and Waiters those queued for it (such as kproxy's
	// iptables-restore). Both are empty when the lock was free.
	Holders, Waiters []Process
}

// Process is a process that holds or waits for the lock.
type Process struct {
	// PID is the process id in the prober's PID namespace; 0 when the process is
	// not visible there (a container without hostPID does not see the host's).
	PID int
	// Command is its command line, "" when unknown.
	Command string
}

// String is "PID 123 (/usr/sbin/iptables-restore -w 5)", or what is known of it.
func (p Process) String() string {
	switch {
	case p.PID <= 0:
		return "a process outside this PID namespace"
	case p.Command == "":
		return fmt.Sprintf("PID %d", p.PID)
	}
	return fmt.Sprintf("PID %d (%s)", p.PID, p.Command)
}

// short is String with the program's base name alone, "PID 123 (iptables-restore)",
// short enough for a title.
func (p Process) short() string {
	program, _, _ := strings.Cut(p.Command, " ")
	if p.PID <= 0 || program == "" {
		return p.String()
	}
	return fmt.Sprintf("PID %d (%s)", p.PID, filepath.Base(program))
}

// lockPollInterval is how often XTablesLock tries a held lock again; iptables-legacy's
// own --wait retries every second by default, so a finer poll sees every release.
const lockPollInterval = 50 * time.Millisecond

// maxCommandLen bounds the command lines in findings: a restore's arguments are short,
// and a report line should stay one line.
const maxCommandLen = 120

// XTablesLock is the LockProber of a real lock file. It tries a non-blocking flock on
// it, as iptables-legacy does, and releases it at once: holding it for an instant is
// what every iptables-legacy command does, and a diagnosis must not block kproxy. When
// the lock is taken it reads the holders from /proc/locks and tries again until Wait
// has passed: iptables commands take it for milliseconds all the time, and only a lock
// held longer than kproxy's restores wait for it stops them.
type XTablesLock struct {
	// Path is the lock file (XTablesLockPath).
	Path string
	// Wait is how long the lock may stay held before it counts as stuck:
	// iptables.DefaultWait, how long kproxy's restores wait for it.
	Wait time.Duration
	// Proc is the proc file system to read locks and command lines from; "/proc"
	// when empty.
	Proc string
}

// Probe implements LockProber.
func (l XTablesLock) Probe(ctx context.Context) (LockState, error) {
	st := LockState{Path: l.Path}
	// Read-only and without O_CREAT: a diagnosis must not create the file, and
	// flock needs no write access.
	f, err := os.Open(l.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("opening the xtables lock: %w", err)
	}
	defer f.Close()
	st.Exists = true
	free, err := tryLock(f)
	if err != nil || free {
		return st, err
	}
	st.Holders, st.Waiters = l.lockers(f)

	start := time.Now()
	ticker := time.NewTicker(lockPollInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("probing the xtables lock: %w", ctx.Err())
		case <-ticker.C:
		}
		free, err := tryLock(f)
		if err != nil {
			return st, err
		}
		st.Waited = time.Since(start)
		if free {
			return st, nil
		}
		if st.Waited >= l.Wait {
			st.Held = true
			return st, nil
		}
	}
}

// tryLock takes and at once releases an exclusive flock on f, and reports whether it
// could: false when another open file holds it.
func tryLock(f *os.File) (bool, error) {
	fd := int(f.Fd())
	err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	if err := unix.Flock(fd, unix.LOCK_UN); err != nil {
		return false, fmt.Errorf("unlocking %s: %w", f.Name(), err)
	}
	return true, nil
}

// lockers returns who holds and who waits for the lock on f, as far as /proc tells. It
// returns nothing when /proc cannot be read: who holds the lock is a detail of the
// finding, not a reason to fail the probe.
func (l XTablesLock) lockers(f *os.File) (holders, waiters []Process) {
	proc := l.Proc
	if proc == "" {
		proc = "/proc"
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, nil
	}
	locks, err := os.ReadFile(filepath.Join(proc, "locks"))
	if err != nil {
		return nil, nil
	}
	// Stat_t.Dev is a uint32 on some architectures.
	dev := uint64(st.Dev)
	holderPIDs, waiterPIDs := parseLocks(locks, unix.Major(dev), unix.Minor(dev), st.Ino)
	describe := func(pids []int) []Process {
		var ps []Process
		for _, pid := range pids {
			ps = append(ps, Process{PID: pid, Command: commandLine(proc, pid)})
		}
		return ps
	}
	return describe(holderPIDs), describe(waiterPIDs)
}

// parseLocks returns the PIDs that /proc/locks shows holding, and waiting for ("->"),
// a lock on the inode ino of device major:minor. Lines read
//
//	1: FLOCK  ADVISORY  WRITE 2331 00:19:1049 0 EOF
//	1: -> FLOCK  ADVISORY  WRITE 2400 00:19:1049 0 EOF
//
// with the device in hex; the PID is the field before the device and inode, which is
// found by its shape because the number of words before it varies with the lock type.
func parseLocks(locks []byte, major, minor uint32, ino uint64) (holders, waiters []int) {
	sc := bufio.NewScanner(bytes.NewReader(locks))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i := 2; i < len(fields); i++ {
			maj, mnr, in, ok := parseDevIno(fields[i])
			if !ok {
				continue
			}
			pid, err := strconv.Atoi(fields[i-1])
			if err == nil && maj == major && mnr == minor && in == ino {
				if fields[1] == "->" {
					waiters = append(waiters, pid)
				} else {
					holders = append(holders, pid)
				}
			}
			break
		}
	}
	return holders, waiters
}

// parseDevIno parses the "MAJOR:MINOR:INODE" field of /proc/locks (hex, hex, decimal).
func parseDevIno(s string) (major, minor uint32, ino uint64, ok bool) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return 0, 0, 0, false
	}
	maj, err1 := strconv.ParseUint(parts[0], 16, 32)
	mnr, err2 := strconv.ParseUint(parts[1], 16, 32)
	in, err3 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, 0, false
	}
	return uint32(maj), uint32(mnr), in, true
}

// commandLine is pid's command line, shortened to maxCommandLen, or "" when it cannot
// be read (the process is gone, or not visible).
func commandLine(proc string, pid int) string {
	if pid <= 0 {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if len(cmd) > maxCommandLen {
		cmd = cmd[:maxCommandLen] + "..."
	}
	return cmd
}

// lockFinding turns a probe of the xtables lock into a finding. A lock held for the
// whole probe is a problem when kproxy uses the legacy backend (or the backend is
// unknown): its restores wait that long for the lock and then fail. iptables-nft does
// not take the lock, so then it only holds back other programs that use legacy.
func lockFinding(st LockState, err error, backend iptables.Backend) Finding {
	const id = "node/xtables-lock"
	if err != nil {
		return unreadable(id, "the xtables lock", err.Error())
	}
	if !st.Exists {
		return Finding{ID: id, Severity: OK, Title: "xtables lock is free",
			Evidence: []string{st.Path + ": no such file, no iptables-legacy command has taken it since boot"}}
	}
	var evidence []string
	for _, p := range st.Holders {
		evidence = append(evidence, "held by "+p.String())
	}
	for _, p := range st.Waiters {
		evidence = append(evidence, "waited for by "+p.String())
	}
	if !st.Held {
		f := Finding{ID: id, Severity: OK, Title: "xtables lock is free", Evidence: []string{st.Path + ": free"}}
		if st.Waited > 0 {
			f.Evidence = append([]string{fmt.Sprintf("%s: taken, free after %v", st.Path, st.Waited.Round(time.Millisecond))}, evidence...)
		}
		return f
	}
	holder := "another process"
	if len(st.Holders) == 1 {
		holder = st.Holders[0].short()
	}
	f := Finding{ID: id, Severity: Problem,
		Title:    "xtables lock is held by " + holder + ": kproxy's syncs fail while it is",
		Evidence: append([]string{fmt.Sprintf("%s: still held after %v", st.Path, st.Waited.Round(time.Millisecond))}, evidence...),
		Fix:      fmt.Sprintf("find why the holder keeps it (lsof %s, its logs) and stop it", st.Path)}
	if len(st.Holders) == 1 && st.Holders[0].PID > 0 {
		f.Fix = fmt.Sprintf("find why PID %d keeps it (cat /proc/%d/cmdline, its logs) and stop it", st.Holders[0].PID, st.Holders[0].PID)
	}
	if backend == iptables.BackendNFT {
		f.Severity = Warning
		f.Title = "xtables lock is held by " + holder + ": iptables-legacy commands (not kproxy's, it uses nft) fail while it is"
	}
	return f
}
