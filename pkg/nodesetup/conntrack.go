package nodesetup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/config"
)

// Conntrack sysctls, relative to /proc/sys.
const (
	sysctlConntrackMax            = "net/netfilter/nf_conntrack_max"
	sysctlTCPEstablishedTimeout   = "net/netfilter/nf_conntrack_tcp_timeout_established"
	sysctlTCPCloseWaitTimeout     = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	sysctlTCPBeLiberal            = "net/netfilter/nf_conntrack_tcp_be_liberal"
	sysctlUDPTimeout              = "net/netfilter/nf_conntrack_udp_timeout"
	sysctlUDPStreamTimeout        = "net/netfilter/nf_conntrack_udp_timeout_stream"
	conntrackHashsizeRelativePath = "sys/module/nf_conntrack/parameters/hashsize"
	onlineCPUsRelativePath        = "sys/devices/system/cpu/online"
)

// MaxConntrackMax caps the scaled nf_conntrack_max (MaxPerCore × CPUs), as
// kube-proxy does, so that large machines do not get tables of many millions
// of entries they will never use. An explicit Min above it is still honoured.
const MaxConntrackMax = 1 << 20 // 1048576

// ConntrackMax returns the nf_conntrack_max to ask for on a node with numCPU
// CPUs, or 0 when cfg.MaxPerCore is 0 (leave it alone): MaxPerCore × numCPU,
// capped at MaxConntrackMax, and raised to Min when the uncapped product is
// smaller.
func ConntrackMax(cfg config.ConntrackConfig, numCPU int) int64 {
	if cfg.MaxPerCore <= 0 {
		return 0
	}
	// int64: 32 CPUs × a large int32 already overflows int32.
	scaled := int64(cfg.MaxPerCore) * int64(numCPU)
	if scaled > MaxConntrackMax {
		return MaxConntrackMax
	}
	return max(scaled, int64(cfg.Min))
}

// validateConntrack rejects values that KubeProxyConfiguration validation
// rejects, so that a caller that skipped validation cannot write nonsense to
// the kernel.
func validateConntrack(cfg config.ConntrackConfig, numCPU int) error {
	var errs []error
	if cfg.MaxPerCore < 0 {
		errs = append(errs, fmt.Errorf("conntrack maxPerCore %d is negative", cfg.MaxPerCore))
	}
	if cfg.Min < 0 {
		errs = append(errs, fmt.Errorf("conntrack min %d is negative", cfg.Min))
	}
	if cfg.MaxPerCore > 0 && numCPU < 1 {
		errs = append(errs, fmt.Errorf("number of CPUs %d is not positive", numCPU))
	}
	return errors.Join(errs...)
}

// ReadOnlySysfsError is returned by ApplyConntrack when the conntrack hash
// size needed raising but /sys is mounted read-only (a known problem with
// some container runtimes, moby/moby#24000). kube-proxy does not fail on it:
// it emits a Warning event on its Node ("/sys is read-only: cannot modify
// conntrack limits, problems may arise later") and carries on. Every other
// setting has been applied when this error is returned. Check for it with
// errors.As.
type ReadOnlySysfsError struct {
	// Path is the file that could not be written.
	Path string
	// Err is the write error (wrapping syscall.EROFS).
	Err error
}

// Error implements error.
func (e *ReadOnlySysfsError) Error() string {
	return fmt.Sprintf("cannot raise the conntrack hash size, sysfs is read-only: %v", e.Err)
}

// Unwrap returns the write error.
func (e *ReadOnlySysfsError) Unwrap() error { return e.Err }

// ApplyConntrack applies cfg to the kernel as kube-proxy does before it
// creates its proxiers (also under --init-only), in this order:
//
//   - when MaxPerCore > 0: nf_conntrack_max is raised to ConntrackMax(cfg, numCPU)
//     if it is lower (never lowered), and the nf_conntrack module's hashsize
//     parameter (root/sys/module/nf_conntrack/parameters/hashsize) is raised
//     to a quarter of that if it is lower. The hash size is read first
//     because it can be written only from the initial network namespace, and
//     a node already set up must not need that.
//   - each timeout that is at least one second is written, in whole seconds,
//     to its sysctl if the sysctl holds a different value;
//   - nf_conntrack_tcp_be_liberal is set to 1 if TCPBeLiberal and it is not 1.
//
// numCPU is the number of CPUs of the node, not of the process's cpuset
// (NumCPU). The first error stops it and is returned: kube-proxy treats these
// as fatal, an unreadable hashsize file included. The exception is a
// read-only /sys, which is returned as a *ReadOnlySysfsError only after the
// remaining settings have been applied.
func ApplyConntrack(ctx context.Context, s Sysctl, root string, cfg config.ConntrackConfig, numCPU int) error {
	logger := klog.FromContext(ctx)
	if err := validateConntrack(cfg, numCPU); err != nil {
		return fmt.Errorf("invalid conntrack settings: %w", err)
	}

	var readOnly error
	if want := ConntrackMax(cfg, numCPU); want > 0 {
		if err := setSysctl(ctx, s, sysctlConntrackMax, want, raiseOnly); err != nil {
			return err
		}
		if err := raiseHashsize(ctx, filepath.Join(root, conntrackHashsizeRelativePath), want/4); err != nil {
			var ro *ReadOnlySysfsError
			if !errors.As(err, &ro) {
				return err
			}
			logger.Error(err, "Could not raise the conntrack hash size; continuing with the other conntrack settings")
			readOnly = err
		}
	} else {
		logger.V(2).Info("Leaving nf_conntrack_max alone", "maxPerCore", cfg.MaxPerCore)
	}

	// In upstream's order. A value below 1 leaves the sysctl alone: a timeout
	// under a second (the kernel's resolution; 0 would make every entry expire
	// at once), or TCPBeLiberal false (be_liberal is never set back to 0).
	for _, setting := range []struct {
		name  string
		value int64
	}{
		{sysctlTCPEstablishedTimeout, wholeSeconds(cfg.TCPEstablishedTimeout)},
		{sysctlTCPCloseWaitTimeout, wholeSeconds(cfg.TCPCloseWaitTimeout)},
		{sysctlTCPBeLiberal, boolToInt(cfg.TCPBeLiberal)},
		{sysctlUDPTimeout, wholeSeconds(cfg.UDPTimeout)},
		{sysctlUDPStreamTimeout, wholeSeconds(cfg.UDPStreamTimeout)},
	} {
		if setting.value <= 0 {
			continue
		}
		if err := setSysctl(ctx, s, setting.name, setting.value, setExactly); err != nil {
			return err
		}
	}
	return readOnly
}

// wholeSeconds is timeout in whole seconds, rounded down.
func wholeSeconds(timeout time.Duration) int64 { return int64(timeout / time.Second) }

// boolToInt is the integer sysctl value of b.
func boolToInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// sysctlUpdate says which current values of a sysctl need no write.
type sysctlUpdate int

const (
	// setExactly writes unless the sysctl holds exactly the wanted value.
	setExactly sysctlUpdate = iota
	// raiseOnly writes only if the sysctl holds less than the wanted value:
	// like kube-proxy, a limit an administrator raised is never lowered.
	raiseOnly
)

// setSysctl writes value to the sysctl name unless its current value needs
// no write under update. A value that cannot be read or parsed is written
// over. Skipping the write lets a node whose settings are already right run
// without write access to /proc/sys.
func setSysctl(ctx context.Context, s Sysctl, name string, value int64, update sysctlUpdate) error {
	logger := klog.FromContext(ctx)
	cur, err := getInt(s, name)
	switch {
	case err != nil:
		logger.V(2).Info("Could not read sysctl; writing it anyway", "entry", name, "err", err)
	case cur == value || update == raiseOnly && cur > value:
		logger.V(2).Info("Sysctl needs no change; leaving it", "entry", name, "value", cur, "wanted", value)
		return nil
	}
	if err := s.Set(name, strconv.FormatInt(value, 10)); err != nil {
		return err
	}
	logger.Info("Set sysctl", "entry", name, "value", value, "previous", cur)
	return nil
}

// getInt reads an integer sysctl.
func getInt(s Sysctl, name string) (int64, error) {
	v, err := s.Get(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing sysctl %s value %q: %w", name, v, err)
	}
	return n, nil
}

// raiseHashsize writes want to the hashsize module parameter at path if it
// holds less.
func raiseHashsize(ctx context.Context, path string, want int64) error {
	cur, err := readInt(path)
	if err != nil {
		return fmt.Errorf("reading the conntrack hash size: %w", err)
	}
	if cur >= want {
		klog.FromContext(ctx).V(2).Info("Conntrack hash size already large enough", "hashsize", cur, "wanted", want)
		return nil
	}
	if err := writeExisting(path, strconv.FormatInt(want, 10)); err != nil {
		if errors.Is(err, syscall.EROFS) {
			return &ReadOnlySysfsError{Path: path, Err: err}
		}
		return fmt.Errorf("setting the conntrack hash size to %d: %w", want, err)
	}
	klog.FromContext(ctx).Info("Set conntrack hashsize", "hashsize", want, "previous", cur)
	return nil
}

// NumCPU returns the number of online CPUs of the node, read from
// root/sys/devices/system/cpu/online, falling back to runtime.NumCPU when
// that cannot be read. Unlike runtime.NumCPU it is not limited by the
// process's cpuset, which a container's CPU pinning shrinks, and
// nf_conntrack_max is a node-wide setting.
func NumCPU(root string) int {
	b, err := os.ReadFile(filepath.Join(root, onlineCPUsRelativePath))
	if err != nil {
		return runtime.NumCPU()
	}
	n, err := countCPUList(strings.TrimSpace(string(b)))
	if err != nil || n < 1 {
		return runtime.NumCPU()
	}
	return n
}

// countCPUList counts the CPUs in a kernel CPU list such as "0-3,8,10-11".
func countCPUList(list string) (int, error) {
	if list == "" {
		return 0, errors.New("empty CPU list")
	}
	n := 0
	for part := range strings.SplitSeq(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		if err != nil {
			return 0, fmt.Errorf("parsing CPU list %q: %w", list, err)
		}
		last := first
		if isRange {
			if last, err = strconv.Atoi(hi); err != nil {
				return 0, fmt.Errorf("parsing CPU list %q: %w", list, err)
			}
		}
		if first < 0 || last < first {
			return 0, fmt.Errorf("parsing CPU list %q: bad range %q", list, part)
		}
		n += last - first + 1
	}
	return n, nil
}
