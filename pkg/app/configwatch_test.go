package app

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestConfigFileChangeRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	restarted := make(chan error, 1)
	go watchConfigFile(ctx, path, 10*time.Millisecond, func(err error) { restarted <- err })
	// Rewriting the same content is not a change.
	if err := os.WriteFile(path, []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-restarted:
		t.Fatalf("restarted on identical content: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := os.WriteFile(path, []byte("a: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-restarted:
		if err == nil {
			t.Error("restart without a reason")
		}
	case <-ctx.Done():
		t.Fatal("a changed config file did not restart the process")
	}
}
