// Package e2e runs kproxy the way operators do: against a real kube-apiserver, etcd and
// kube-controller-manager, on several simulated nodes, with real traffic
// (test/e2e/framework has the harness). They run only with KPROXY_E2E=1, as root, with
// the binaries hack/e2e.sh builds; otherwise they skip, saying what is missing. Run them
// with make e2e.
package e2e

import (
	"testing"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

func TestMain(m *testing.M) { framework.Main(m) }
