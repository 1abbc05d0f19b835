package app

import (
	"os"
	"testing"

	logsapi "k8s.io/component-base/logs/api/v1"
)

func TestMain(m *testing.M) {
	// Commands apply their logging settings, which component-base allows once per
	// process; the tests run many commands, all with the default settings.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	os.Exit(m.Run())
}
