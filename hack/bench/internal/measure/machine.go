package measure

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// Machine names the machine the figures belong to.
type Machine struct {
	Cores     int               `json:"cores"`
	MemoryGiB float64           `json:"memoryGiB"`
	CPU       string            `json:"cpu"`
	Kernel    string            `json:"kernel"`
	IPTables  map[string]string `json:"iptables"`
	Go        string            `json:"go"`
	// Revision is the kproxy commit the binary was built from, "+dirty" when the tree had
	// changes; empty when the build carries no VCS stamp (go run, go test).
	Revision    string `json:"revision"`
	LoadAtStart string `json:"loadAtStart"`
}

// DescribeMachine reads what the machine is: cores, memory, CPU model, kernel, the
// iptables versions, and the commit this binary was built from.
func DescribeMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), IPTables: map[string]string{}}
	if kb := procField("/proc/meminfo", "MemTotal:"); kb != "" {
		n, _ := strconv.ParseFloat(strings.Fields(kb)[0], 64)
		m.MemoryGiB = n / (1 << 20)
	}
	m.CPU = procField("/proc/cpuinfo", "model name")
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	for _, b := range []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := exec.CommandContext(ctx, iptables.BinaryName(v1.IPv4Protocol, b, ""), "--version").Output()
		cancel()
		if err == nil {
			m.IPTables[string(b)] = strings.TrimSpace(string(out))
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" && modified == "true" {
			rev += "+dirty"
		}
		m.Revision = rev
	}
	m.LoadAtStart = Loadavg()
	return m
}

// procField returns the value after the colon of the first line of file that starts with
// key.
func procField(file, key string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, key) {
			_, v, _ := strings.Cut(line, ":")
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Loadavg is the 1, 5 and 15 minute load average.
func Loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// Load is how busy the machine's CPUs were over an interval, as fractions of all of them.
type Load struct {
	// Busy counts every CPU's non-idle time; Others is Busy less this process and its
	// descendants (waited for, or named to Since): other programs, and kernel work no
	// process is billed for (such as freeing a deleted namespace's rules).
	Busy   float64 `json:"busy"`
	Others float64 `json:"others"`
	Steal  float64 `json:"steal"`
	// Loadavg is the 1, 5 and 15 minute load average at the end of the interval.
	Loadavg string `json:"loadavg"`
}

// CPUSample is a reading of the machine's and this process tree's CPU counters.
type CPUSample struct {
	at          time.Time
	busy, steal float64 // seconds, all CPUs, from /proc/stat
	ours        float64 // seconds, this process and its waited-for descendants
}

// userHZ is the unit of /proc/stat; it is 100 on every Linux architecture Go supports.
const userHZ = 100

// ReadCPU reads the counters now.
func ReadCPU() CPUSample {
	s := CPUSample{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := bytes.Cut(b, []byte{'\n'})
		f := strings.Fields(string(line)) // cpu user nice system idle iowait irq softirq steal
		val := func(i int) float64 {
			if i >= len(f) {
				return 0
			}
			n, _ := strconv.ParseFloat(f[i], 64)
			return n / userHZ
		}
		s.busy = val(1) + val(2) + val(3) + val(6) + val(7)
		s.steal = val(8)
	}
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			s.ours += TvSeconds(ru.Utime) + TvSeconds(ru.Stime)
		}
	}
	return s
}

// Since is the load between o and s. ownSeconds is CPU time of this process's
// descendants that the counters cannot see yet (a child still running): it counts as
// ours, not others'.
func (s CPUSample) Since(o CPUSample, ownSeconds float64) Load {
	capacity := s.at.Sub(o.at).Seconds() * float64(runtime.NumCPU())
	if capacity <= 0 {
		return Load{Loadavg: Loadavg()}
	}
	busy := s.busy - o.busy
	return Load{
		Busy:    busy / capacity,
		Others:  max(0, busy-(s.ours-o.ours)-ownSeconds) / capacity,
		Steal:   (s.steal - o.steal) / capacity,
		Loadavg: Loadavg(),
	}
}

// TvSeconds converts a rusage time to seconds.
func TvSeconds(t syscall.Timeval) float64 {
	return float64(t.Sec) + float64(t.Usec)/1e6
}
