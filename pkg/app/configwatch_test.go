package app

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeAtomically replaces path's content the way a ConfigMap update does (a rename), so
// the watcher never sees a half-written file.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestConfigFileChangeRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomically(t, path, "a: 1\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	restarted := make(chan error, 1)
	go watchConfigFile(ctx, path, []byte("a: 1\n"), 10*time.Millisecond, func(err error) { restarted <- err })
	// Rewriting the same content is not a change.
	writeAtomically(t, path, "a: 1\n")
	select {
	case err := <-restarted:
		t.Fatalf("restarted on identical content: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	writeAtomically(t, path, "a: 2\n")
	select {
	case err := <-restarted:
		if err == nil {
			t.Error("restart without a reason")
		}
	case <-ctx.Done():
		t.Fatal("a changed config file did not restart the process")
	}
}

// TestConfigChangeBeforeWatchRestarts changes the file between loading it and starting
// the watch: the running configuration is the loaded one, so the change must count.
func TestConfigChangeBeforeWatchRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomically(t, path, header)
	o, fs, err := newFlags(t, "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Complete(context.Background(), fs); err != nil {
		t.Fatal(err)
	}
	if string(o.loadedConfig) != header {
		t.Fatalf("loaded config %q, want the file's content %q", o.loadedConfig, header)
	}
	writeAtomically(t, path, header+"clusterCIDR: 10.244.0.0/16\n")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	restarted := make(chan error, 1)
	go watchConfigFile(ctx, path, o.loadedConfig, 10*time.Millisecond, func(err error) { restarted <- err })
	select {
	case err := <-restarted:
		if err == nil {
			t.Error("restart without a reason")
		}
	case <-ctx.Done():
		t.Fatal("a config file changed before the watch started did not restart the process")
	}
}
