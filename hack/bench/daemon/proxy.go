package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// proxyProcess is one daemon running on the node.
type proxyProcess struct {
	name string
	cmd  *exec.Cmd
	// Started is when the process was started: the origin of "start to rules visible".
	started time.Time
	log     string
	logFile *os.File
	exited  chan struct{}
	waitErr error
	stopped sync.Once
}

// startProxy starts the daemon name ("kproxy" or "upstream") in netns as node nodeName,
// with the backend forced: kproxy by --iptables-backend, upstream, which runs whatever
// "iptables" is on PATH, by a PATH whose iptables commands are the backend's (test/diff
// does the same). "ip netns exec" and env exec in place, so the process's PID is the
// daemon's and /proc/PID tells its memory and CPU.
func startProxy(cfg config, name, netns, nodeName string, backend iptables.Backend, confPath, lock, dir string) (*proxyProcess, error) {
	bin := cfg.KProxy
	env := []string{"XTABLES_LOCKFILE=" + lock}
	args := []string{"--config=" + confPath, "--hostname-override=" + nodeName, "-v=2"}
	if name == proxyUpstream {
		bin = cfg.Upstream
		pathDir := filepath.Join(dir, "path-"+string(backend))
		if err := backendPath(pathDir, backend); err != nil {
			return nil, err
		}
		env = append(env, "PATH="+pathDir+":"+os.Getenv("PATH"))
	} else {
		args = append(args, "--iptables-backend="+string(backend))
	}
	logPath := filepath.Join(dir, fmt.Sprintf("%s-%s.log", name, backend))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	full := append(append(append([]string{"netns", "exec", netns, "env"}, env...), bin), args...)
	cmd := exec.Command("ip", full...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proxyProcess{name: name, cmd: cmd, log: logPath, logFile: logFile, exited: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// pid is the daemon's process ID.
func (p *proxyProcess) pid() int { return p.cmd.Process.Pid }

// alive returns an error, with the end of the daemon's log, once it has exited.
func (p *proxyProcess) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited (%v); the end of its log (%s):\n%s", p.name, p.waitErr, p.log, logTail(p.log, 20))
	default:
		return nil
	}
}

// stop kills the daemon and everything it started, and waits for it; only the first
// call does anything.
func (p *proxyProcess) stop() {
	p.stopped.Do(func() {
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
		}
		measure.KillGroup(p.cmd)
		p.logFile.Close()
	})
}

// usage reads the daemon's memory and CPU from /proc.
func (p *proxyProcess) usage() (usage, error) {
	var u usage
	var err1, err2, err3 error
	u.PeakRSSKiB, err1 = measure.ProcStatusKiB(p.pid(), "VmHWM")
	u.RSSKiB, err2 = measure.ProcStatusKiB(p.pid(), "VmRSS")
	u.CPU, err3 = measure.ReadProcCPU(p.pid())
	if err := errors.Join(err1, err2, err3); err != nil {
		return u, fmt.Errorf("%s: %w", p.name, err)
	}
	return u, nil
}

// usage is a daemon's memory and CPU at one moment.
type usage struct {
	// PeakRSSKiB is VmHWM, the most the process has held so far; RSSKiB VmRSS, now.
	PeakRSSKiB int64           `json:"peakRSSKiB"`
	RSSKiB     int64           `json:"rssKiB"`
	CPU        measure.ProcCPU `json:"cpu"`
}

// backendPath fills dir with iptables commands that run backend's binaries, for
// upstream's PATH.
func backendPath(dir string, backend iptables.Backend) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		for _, tool := range []string{"", "save", "restore"} {
			target, err := exec.LookPath(iptables.BinaryName(family, backend, tool))
			if err != nil {
				return err
			}
			plain := "iptables"
			if family == v1.IPv6Protocol {
				plain = "ip6tables"
			}
			if tool != "" {
				plain += "-" + tool
			}
			link := filepath.Join(dir, plain)
			_ = os.Remove(link)
			if err := os.Symlink(target, link); err != nil {
				return err
			}
		}
	}
	return nil
}

// version is what a binary says of itself with --version.
func version(bin string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("unknown (%v)", err)
	}
	return string(bytes.TrimSpace(out))
}

// logTail returns the last lines of a log file.
func logTail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}
