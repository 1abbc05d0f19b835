package iptables

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// hintChains are the chains kubelet (1.17 and later) creates in the mangle
// table of the backend it uses; finding one says which backend the host uses.
var hintChains = [][]byte{[]byte(":KUBE-IPTABLES-HINT "), []byte(":KUBE-KUBELET-CANARY ")}

// detectSaveTimeout bounds each iptables-save run by DetectBackend. Some
// iptables-nft releases (1.8.3) could loop forever while listing; a save that
// times out counts as a save that showed nothing.
const detectSaveTimeout = 10 * time.Second

// ChooseBackend is the decision of DetectBackend, given what the saves showed:
// whether a kubelet hint chain was seen in the legacy or nft tables (of either
// family), and how many rules ("-A" lines) each backend holds over both
// families. A hint in nft wins, then a hint in legacy; without hints the
// backend with more rules wins, and nft wins ties (including an empty host),
// because nft is what current distributions and kubelets default to.
func ChooseBackend(legacyHint, nftHint bool, legacyRules, nftRules int) Backend {
	switch {
	case nftHint:
		return BackendNFT
	case legacyHint:
		return BackendLegacy
	case legacyRules > nftRules:
		return BackendLegacy
	default:
		return BackendNFT
	}
}

// DetectBackend picks the backend the host already uses, as Kubernetes'
// iptables-wrapper does, by reading (never writing) both backends' rules in
// the current network namespace:
//
//  1. "iptables-nft-save -t mangle" and its IPv6 twin: a KUBE-IPTABLES-HINT or
//     KUBE-KUBELET-CANARY chain means nft.
//  2. "iptables-legacy-save" and its IPv6 twin, of all tables: such a chain
//     means legacy. The legacy save is not narrowed to mangle because asking
//     the legacy interface for a table makes the kernel create it.
//  3. Otherwise the backend with more rule lines over both families wins,
//     nft on a tie (ChooseBackend).
//
// A save that fails (binary missing, no IPv6, timeout) counts as empty; only
// if every save fails is an error returned.
func DetectBackend(ctx context.Context) (Backend, error) {
	return detect(ctx, runSave)
}

// saveFunc runs an iptables-save binary and returns its standard output.
type saveFunc func(ctx context.Context, name string, args ...string) ([]byte, error)

func runSave(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, detectSaveTimeout)
	defer cancel()
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, fmt.Errorf("%w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// detect is DetectBackend with the exec part injectable, for tests.
func detect(ctx context.Context, save saveFunc) (Backend, error) {
	logger := klog.FromContext(ctx)
	var (
		runs, failures int
		errs           []error
	)
	// saveAll concatenates the save output of both families, dropping the
	// ones that fail: a host without IPv6 still has a usable IPv4 answer.
	saveAll := func(backend Backend, args ...string) []byte {
		var all []byte
		for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			name := BinaryName(family, backend, "save")
			runs++
			out, err := save(ctx, name, args...)
			if err != nil {
				failures++
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				logger.V(4).Info("iptables-save failed during backend detection", "cmd", name, "args", args, "err", err)
				continue
			}
			all = append(all, out...)
		}
		return all
	}

	nftMangle := saveAll(BackendNFT, "-t", "mangle")
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("detecting iptables backend: %w", err)
	}
	nftHint := hasHint(nftMangle)
	var legacyHint bool
	var legacyRules, nftRules int
	if !nftHint {
		legacyAll := saveAll(BackendLegacy)
		legacyHint = hasHint(legacyAll)
		if !legacyHint {
			legacyRules = countRules(legacyAll)
			nftRules = countRules(saveAll(BackendNFT))
		}
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("detecting iptables backend: %w", err)
	}
	if failures == runs {
		return "", fmt.Errorf("detecting iptables backend: every iptables-save failed: %w", errors.Join(errs...))
	}
	b := ChooseBackend(legacyHint, nftHint, legacyRules, nftRules)
	logger.V(2).Info("Detected iptables backend", "backend", b, "nftHint", nftHint, "legacyHint", legacyHint,
		"legacyRules", legacyRules, "nftRules", nftRules)
	return b, nil
}

// hasHint reports whether save output declares one of kubelet's hint chains.
func hasHint(save []byte) bool {
	found := false
	eachLine(save, func(line []byte) {
		for _, h := range hintChains {
			if bytes.HasPrefix(line, h) || bytes.Equal(line, h[:len(h)-1]) {
				found = true
			}
		}
	})
	return found
}

// countRules counts the rule lines ("-A ...") of save output.
func countRules(save []byte) int {
	n := 0
	eachLine(save, func(line []byte) {
		if len(line) > 0 && line[0] == '-' {
			n++
		}
	})
	return n
}

func eachLine(b []byte, fn func([]byte)) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		fn(sc.Bytes())
	}
}
