package app

import (
	"bytes"
	"strings"
	"testing"

	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
)

// TestRenderExamples pins what `kproxy render` prints for the shipped examples, which is
// also the README's first command.
func TestRenderExamples(t *testing.T) {
	cmd := NewCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"render", "-f", "../../examples", "--node-name", "node-1", "--cluster-cidr", "10.244.0.0/16"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("render: %v (stderr %s)", err, errOut.String())
	}
	rulestest.Golden(t, "render-examples", out.String())

	// The payload part must apply cleanly.
	tables := rulestest.NewTables()
	if err := tables.Apply(out.Bytes()); err != nil {
		t.Errorf("rendered payload does not apply: %v", err)
	}
}

func TestRenderErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"render"}, "-f is required"},
		{[]string{"render", "-f", "does-not-exist"}, "no such file"},
		{[]string{"render", "-f", "../../examples", "--node-name", "nope"}, "matches none"},
		{[]string{"render", "-f", "../../examples", "--ip-family", "IPv5"}, "--ip-family"},
		{[]string{"render", "-f", "../../examples", "--cluster-cidr", "10.0.0.0/33"}, "clusterCIDR"},
		{[]string{"--proxy-mode", "ipvs"}, "iptables"},
	} {
		cmd := NewCommand()
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		cmd.SetArgs(tc.args)
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
