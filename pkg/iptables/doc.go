// Package iptables is kproxy's one seam to the outside world: it is the only
// package that runs binaries. Everything above it (renderer, proxier) deals in
// payload bytes and typed errors, so it can be tested against the stateful fake
// in pkg/iptables/fake.
//
// # One value per IP family and backend
//
// New returns an Interface bound to one IP family and one backend. The backend
// is chosen explicitly: the binaries are iptables-legacy-restore,
// ip6tables-nft-save and so on, never the plain iptables name, because the
// alternatives symlink behind that name may point at the other backend than
// the one the host (kubelet, CNI plugins) writes to, and rules written to the
// wrong backend are invisible to the other one (kubernetes/kubernetes#107965).
// DetectBackend makes that choice the way Kubernetes' iptables-wrapper does.
//
// # Commands
//
//   - Restore runs "<family>tables-<backend>-restore -w N --noflush" with the
//     payload on stdin. There is no --counters: kproxy declares every chain it
//     writes as ":NAME - [0:0]" and does not want to restore counters.
//   - SaveChains runs "<family>tables-<backend>-save -t TABLE" (no -w: save
//     takes no lock) and keeps the chain names only.
//   - EnsureChain, ChainExists, RuleExists and DeleteRule use
//     github.com/coreos/go-iptables with an explicit binary path and --wait.
//
// # Errors
//
// A restore that fails at a payload line returns a *ParseError (wrapped) with
// the line number, so the caller can log the lines around it (LinesAround).
// The two backends report failures differently, and not always at the same
// line; see ParseError.
//
// Any other failure with exit status 4 (the lock wait expired, or the kernel
// was busy) wraps a *BusyError: the command may succeed when retried, and a
// ChainExists that failed that way has not found the chain missing.
//
// # Flush detection
//
// Monitor keeps a canary chain in several tables and calls back when another
// program (firewalld reload, "iptables -F -X", a restore without --noflush)
// has deleted them, so the caller can rewrite its rules in full.
package iptables
