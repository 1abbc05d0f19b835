// Package nodesetup applies the node-wide kernel settings kube-proxy makes
// before it programs any rule: the conntrack sysctls and hash size, the
// route_localnet sysctl that localhost NodePorts need, and the process's OOM
// score. These are the privileged steps that --init-only runs (for an init
// container) and then exits.
//
// Everything is plain file reads and writes under a root directory ("/",
// HostRoot, in production), so the package runs no binaries and its tests
// need no privileges: they point the root at a temporary directory laid out
// like /proc and /sys.
//
// Like kube-proxy, it only ever raises nf_conntrack_max and the conntrack hash
// size, writes a sysctl only when its value differs from the wanted one (so a
// node whose settings are already right needs no write access), and never
// reverts anything on exit or --cleanup.
package nodesetup
