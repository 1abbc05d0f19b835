package app

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"k8s.io/klog/v2"
)

// configWatchInterval is how often the --config file is compared with what was loaded.
const configWatchInterval = 5 * time.Second

// watchConfigFile ends the process (through restart) when the --config file's content
// differs from loaded, the bytes the running configuration was built from, as upstream
// does: a restarted pod picks up the new settings in full, where a reload in place could
// leave half-applied state. Comparing with what was loaded, not with a read made when the
// watch starts, catches an edit that lands in between. A file that cannot be read is
// logged and checked again later (ConfigMap updates swap a symlink, briefly).
func watchConfigFile(ctx context.Context, path string, loaded []byte, interval time.Duration, restart func(error)) {
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		current, err := os.ReadFile(path)
		if err != nil {
			logger.V(2).Info("Config file unreadable; checking again later", "file", path, "err", err.Error())
			continue
		}
		if !bytes.Equal(current, loaded) {
			restart(fmt.Errorf("config file %s changed; restarting to apply it", path))
			return
		}
	}
}
