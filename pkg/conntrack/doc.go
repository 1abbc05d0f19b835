// Package conntrack deletes stale UDP conntrack entries for services.
//
// Why this exists: the nat rules only see the first packet of a flow. Every
// later packet of a UDP "connection" follows the conntrack entry that packet
// created, so after an endpoint goes away, clients that keep sending from the
// same source port (DNS resolvers, for one) keep hitting the dead endpoint
// until the entry times out, which it never does while they keep sending. TCP
// and SCTP do not need this: the dead peer resets or times out the connection
// and the client opens a new one, which goes through the rules again.
//
// The package has two layers:
//
//   - Interface is the kernel's conntrack table for one IP family: list the
//     UDP entries, delete exact entries. NewNetlink talks to the kernel over
//     netlink; the fake subpackage is an in-memory table for tests.
//   - Reconciler.CleanStaleEntries compares the listed entries with one
//     snapshot of the services (upstream kube-proxy's rules, see
//     CleanStaleEntries) and deletes the entries that no longer lead to a
//     serving endpoint.
//
// Log lines come from the logger in the context. The proxier has already added
// the ipFamily key to it, so this package does not add it again.
package conntrack
