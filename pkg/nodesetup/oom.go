package nodesetup

import (
	"fmt"
	"path/filepath"
	"strconv"
)

// OOM score adjustment bounds, as the kernel and KubeProxyConfiguration
// validation accept them.
const (
	minOOMScoreAdj = -1000
	maxOOMScoreAdj = 1000
)

// SetOOMScoreAdj writes value to root/proc/self/oom_score_adj (root is
// HostRoot in production), so that the kernel's OOM killer spares kube-proxy
// before the workloads whose traffic depends on it (kube-proxy's default is
// -999). kube-proxy only logs a failure, at V(2): lowering the score needs
// CAP_SYS_RESOURCE, which an unprivileged test run lacks.
func SetOOMScoreAdj(root string, value int32) error {
	if value < minOOMScoreAdj || value > maxOOMScoreAdj {
		return fmt.Errorf("oom_score_adj %d is outside [%d, %d]", value, minOOMScoreAdj, maxOOMScoreAdj)
	}
	path := filepath.Join(root, "proc", "self", "oom_score_adj")
	if err := writeExisting(path, strconv.Itoa(int(value))); err != nil {
		return fmt.Errorf("setting oom_score_adj to %d: %w", value, err)
	}
	return nil
}
