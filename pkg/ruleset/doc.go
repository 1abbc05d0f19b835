// Package ruleset holds a netfilter ruleset in memory and walks packets through it.
//
// Tables are read from iptables-restore payloads (Apply, with iptables-restore
// --noflush semantics: per-table commit, jumps to missing chains refused) or from
// iptables-save output of either backend (ParseSave). The stateful iptables fake
// (pkg/iptables/fake) keeps its state in them, the rule tests assert on them, and
// `kproxy trace` reads the node's live rules into them.
//
// The Tracer follows the first packet of a new connection through nat and filter as
// the kernel orders the hooks, forks at every random (statistic) match so that each
// endpoint shows up with the probability of reaching it, and records every rule that
// acted on the packet. It models the matches and targets kube-proxy's rules use, in
// the order and spelling either iptables-save prints them; anything else is an error
// naming the match, never a guess, because a wrong explanation of why traffic fails
// is worse than none.
package ruleset
