package nodesetup

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// HostRoot is the root to pass in production: the real /proc and /sys.
const HostRoot = "/"

// Sysctl reads and writes kernel parameters by their /proc/sys path, such as
// "net/netfilter/nf_conntrack_max". The slash form is used rather than the
// dotted one because interface names in paths may contain dots.
type Sysctl interface {
	// Get returns the parameter's value with surrounding white space removed.
	Get(name string) (string, error)
	// Set writes value to the parameter.
	Set(name, value string) error
}

// procSysctl is a Sysctl over the files under dir (root/proc/sys).
type procSysctl struct {
	dir string
}

// NewProcSysctl returns the Sysctl that reads and writes the files under
// root/proc/sys. root is HostRoot in production; tests use a temporary
// directory holding the files they need.
func NewProcSysctl(root string) Sysctl {
	return procSysctl{dir: filepath.Join(root, "proc", "sys")}
}

// path maps name to its file, refusing names that would leave dir.
func (p procSysctl) path(name string) (string, error) {
	if !filepath.IsLocal(name) {
		return "", fmt.Errorf("invalid sysctl name %q: want a relative path such as net/ipv4/ip_forward", name)
	}
	return filepath.Join(p.dir, name), nil
}

// Get implements Sysctl.
func (p procSysctl) Get(name string) (string, error) {
	path, err := p.path(name)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Set implements Sysctl.
func (p procSysctl) Set(name, value string) error {
	path, err := p.path(name)
	if err != nil {
		return err
	}
	if err := writeExisting(path, value); err != nil {
		return fmt.Errorf("setting sysctl %s to %q: %w", name, value, err)
	}
	return nil
}

// writeExisting writes value to the existing file path. It never creates the
// file: under /proc and /sys a missing file means a missing kernel feature
// (nf_conntrack not loaded, no IPv4), which must be an error rather than a
// new file in a test root or a confusing EACCES.
func writeExisting(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(value)
	// The kernel reports a rejected value at write time, but a close error
	// is still a failed write on other file systems.
	cerr := f.Close()
	if werr != nil {
		return werr
	}
	return cerr
}

// readInt reads an integer file, such as a sysctl or a module parameter.
func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return v, nil
}
