package measure

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ProcStatusKiB reads a size field of /proc/PID/status (such as "VmRSS" or "VmHWM"), in
// KiB; pid 0 is this process.
func ProcStatusKiB(pid int, field string) (int64, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	prefix := []byte(field + ":")
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), prefix)
		if !ok {
			continue
		}
		num, _, _ := bytes.Cut(bytes.TrimSpace(rest), []byte(" "))
		return strconv.ParseInt(string(num), 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return 0, fmt.Errorf("no %s in %s", field, path)
}

// ProcCPU is a process's CPU time from /proc/PID/stat, in seconds: its own (utime and
// stime) and that of the children it waited for (cutime and cstime; for a proxy, the
// iptables binaries it ran). ChildrenSys is the part of Children spent in the kernel.
type ProcCPU struct {
	Self        float64 `json:"self"`
	Children    float64 `json:"children"`
	ChildrenSys float64 `json:"childrenSys"`
}

// ReadProcCPU reads pid's CPU times.
func ReadProcCPU(pid int) (ProcCPU, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcCPU{}, err
	}
	// The command name (field 2) may hold spaces: count fields after its ')'. The state
	// (field 3) is then the first, utime (14) the 12th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ProcCPU{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return ProcCPU{}, fmt.Errorf("/proc/%d/stat: %d fields after the command name", pid, len(f))
	}
	tick := func(s string) float64 {
		n, _ := strconv.ParseFloat(s, 64)
		return n / userHZ
	}
	return ProcCPU{Self: tick(f[11]) + tick(f[12]), Children: tick(f[13]) + tick(f[14]), ChildrenSys: tick(f[14])}, nil
}

// InOwnGroup makes cmd the leader of a new process group, so that KillGroup can end it
// and everything it started. Cancellation (or a timeout) sends SIGTERM when graceful (the
// process then stops what it started itself), else SIGKILL to the whole group; a process
// still there after the grace period is killed.
func InOwnGroup(cmd *exec.Cmd, graceful bool) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if graceful {
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	}
	cmd.WaitDelay = 10 * time.Second
}

// KillGroup kills whatever is left of cmd's process group after cmd exited, and reaps
// what this process inherited of it (after BecomeSubreaper): no iptables binary outlives
// its measurement, not even as a zombie.
func KillGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	pgid := cmd.Process.Pid
	if syscall.Kill(-pgid, syscall.SIGKILL) != nil {
		return // the group is empty
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		pid, err := syscall.Wait4(-pgid, nil, syscall.WNOHANG, nil)
		if err != nil {
			return // no child of ours left in the group
		}
		if pid == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// BecomeSubreaper makes processes orphaned below this one (an iptables binary whose parent
// was killed) its children rather than init's, so that KillGroup can reap them.
func BecomeSubreaper() {
	const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER, <linux/prctl.h>; not in package syscall
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
}
