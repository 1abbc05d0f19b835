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
	go watchConfigFile(ctx, path, 10*time.Millisecond, func(err error) { restarted <- err })
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
