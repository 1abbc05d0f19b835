package conntrack

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Interface is the kernel's conntrack table for one IP family. It is an
// interface so that the cleanup logic can be tested against a stateful fake.
type Interface interface {
	// ListUDP returns the table's UDP entries of the family.
	ListUDP(ctx context.Context) ([]Flow, error)
	// Delete deletes the entries whose key is exactly one of flows (see Flow)
	// and returns how many it deleted. Flows that are no longer in the table
	// are not an error: an entry may time out between listing and deleting.
	// The count is meaningful even when the error is not nil.
	Delete(ctx context.Context, flows []Flow) (int, error)
}

// Flow is one conntrack entry, reduced to what identifies it: the protocol,
// both tuples and the zone. Two entries with equal Flows are the same entry to
// the kernel, so a Flow read from a listing is an exact key for Delete.
//
// Addresses are never IPv4-mapped IPv6: an IPv4 flow holds 4-byte addresses.
type Flow struct {
	// Protocol is the layer 4 protocol (ListUDP returns UDP flows only; the
	// fake can hold others so tests can check they are left alone).
	Protocol v1.Protocol
	// OrigSrc and OrigDst are the tuple of the first packet as the client
	// sent it: OrigDst is the service address (VIP or node IP) before DNAT.
	OrigSrc, OrigDst netip.AddrPort
	// ReplySrc and ReplyDst are the tuple the reply is expected to carry:
	// after DNAT, ReplySrc is the endpoint the flow was sent to.
	ReplySrc, ReplyDst netip.AddrPort
	// Zone is the conntrack zone; the same tuples in two zones are two
	// entries.
	Zone uint16
}

// String renders the flow close to "conntrack -L" output, for logs and test
// failures.
func (f Flow) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s orig %s -> %s reply %s -> %s",
		strings.ToLower(string(f.Protocol)), f.OrigSrc, f.OrigDst, f.ReplySrc, f.ReplyDst)
	if f.Zone != 0 {
		fmt.Fprintf(&b, " zone %d", f.Zone)
	}
	return b.String()
}
