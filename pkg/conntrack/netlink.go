package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// IANA protocol numbers, as conntrack reports them. Spelled out rather than
// taken from syscall so that they are the same on every GOOS the package
// compiles for.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

// maxAttempts bounds how often a dump is retried after the kernel reports it
// was interrupted. The kernel sets NLM_F_DUMP_INTR when the table changed
// during the dump, which on a busy node is common; a few retries almost
// always get a consistent dump, and upstream kube-proxy retries as often.
const maxAttempts = 5

// netlinkTable is the Interface over the kernel's conntrack table.
type netlinkTable struct {
	family v1.IPFamily
	// inet is the netlink family number of family; 0 when family is
	// neither IPv4 nor IPv6, which every method then reports as an error.
	inet netlink.InetFamily
}

var _ Interface = (*netlinkTable)(nil)

// NewNetlink returns the conntrack table of family in the network namespace of
// the calling thread, spoken to over netlink (not the conntrack binary). Each
// call opens its own netlink socket in the namespace of the thread that makes
// it, so a test can use one Interface inside a namespace by calling it from a
// thread locked into that namespace.
func NewNetlink(family v1.IPFamily) Interface {
	t := &netlinkTable{family: family}
	switch family {
	case v1.IPv4Protocol:
		t.inet = netlink.FAMILY_V4
	case v1.IPv6Protocol:
		t.inet = netlink.FAMILY_V6
	}
	return t
}

func (t *netlinkTable) checkFamily() error {
	if t.inet == 0 {
		return fmt.Errorf("conntrack: unsupported IP family %q", t.family)
	}
	return nil
}

// isInterrupted reports whether err says a dump was interrupted. Netlink
// reports that as ErrDumpInterrupted, which also matches EINTR (its older
// form); a plain EINTR from the socket is the same situation for us.
func isInterrupted(err error) bool {
	return errors.Is(err, syscall.EINTR)
}

// ListUDP implements Interface. An interrupted dump is retried; when every
// attempt is interrupted the last, possibly incomplete, listing is used, as
// upstream does: entries that are missed now are found by a later cleanup,
// while failing would leave all of them in place.
func (t *netlinkTable) ListUDP(ctx context.Context) ([]Flow, error) {
	if err := t.checkFamily(); err != nil {
		return nil, err
	}
	logger := klog.FromContext(ctx)
	var entries []*netlink.ConntrackFlow
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("listing %s conntrack entries: %w", t.family, err)
		}
		var err error
		entries, err = netlink.ConntrackTableList(netlink.ConntrackTable, t.inet)
		if err == nil {
			break
		}
		if !isInterrupted(err) {
			return nil, fmt.Errorf("listing %s conntrack entries: %w", t.family, err)
		}
		if attempt == maxAttempts {
			logger.Info("Conntrack dump kept being interrupted, using a possibly incomplete listing",
				"attempts", attempt, "entries", len(entries))
			break
		}
		logger.V(4).Info("Conntrack dump interrupted, retrying", "attempt", attempt)
	}

	flows := make([]Flow, 0, len(entries))
	for _, e := range entries {
		if f, ok := fromNetlink(e); ok && f.Protocol == v1.ProtocolUDP {
			flows = append(flows, f)
		}
	}
	return flows, nil
}

// Delete implements Interface. Netlink deletes by filter over a fresh dump:
// every dumped entry whose Flow is in flows is deleted by its own tuples, so
// nothing else can match. An interrupted dump may have hidden some of the
// entries, so the delete is repeated; entries already deleted are no longer in
// the next dump and are not counted twice.
func (t *netlinkTable) Delete(ctx context.Context, flows []Flow) (int, error) {
	if err := t.checkFamily(); err != nil {
		return 0, err
	}
	if len(flows) == 0 {
		// Without this, netlink would still dump the whole table.
		return 0, nil
	}
	filter := make(flowFilter, len(flows))
	for _, f := range flows {
		filter[f] = struct{}{}
	}

	logger := klog.FromContext(ctx)
	deleted := 0
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return deleted, fmt.Errorf("deleting %s conntrack entries: %w", t.family, err)
		}
		n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, t.inet, filter)
		deleted += int(n)
		if err == nil {
			return deleted, nil
		}
		if !isInterrupted(err) || attempt == maxAttempts {
			return deleted, fmt.Errorf("deleting %s conntrack entries (%d of %d deleted): %w",
				t.family, deleted, len(flows), err)
		}
		logger.V(4).Info("Conntrack dump interrupted while deleting, retrying", "attempt", attempt, "deleted", deleted)
	}
}

// flowFilter is a netlink.CustomConntrackFilter matching exactly the entries
// whose Flow is in the set. It is a set rather than a list of filters because
// netlink tries every filter on every entry: with one filter per flow a large
// cleanup would cost entries × flows comparisons.
type flowFilter map[Flow]struct{}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (s flowFilter) MatchConntrackFlow(e *netlink.ConntrackFlow) bool {
	f, ok := fromNetlink(e)
	if !ok {
		return false
	}
	_, hit := s[f]
	return hit
}

// fromNetlink converts a netlink entry into a Flow. It reports false for an
// entry it cannot represent (a protocol other than TCP, UDP or SCTP, or a
// missing address), which therefore never matches a Flow.
func fromNetlink(e *netlink.ConntrackFlow) (Flow, bool) {
	if e == nil {
		return Flow{}, false
	}
	var proto v1.Protocol
	switch e.Forward.Protocol {
	case protoUDP:
		proto = v1.ProtocolUDP
	case protoTCP:
		proto = v1.ProtocolTCP
	case protoSCTP:
		proto = v1.ProtocolSCTP
	default:
		return Flow{}, false
	}
	origSrc, ok1 := addrPort(e.Forward.SrcIP, e.Forward.SrcPort)
	origDst, ok2 := addrPort(e.Forward.DstIP, e.Forward.DstPort)
	replySrc, ok3 := addrPort(e.Reverse.SrcIP, e.Reverse.SrcPort)
	replyDst, ok4 := addrPort(e.Reverse.DstIP, e.Reverse.DstPort)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return Flow{}, false
	}
	return Flow{
		Protocol: proto,
		OrigSrc:  origSrc,
		OrigDst:  origDst,
		ReplySrc: replySrc,
		ReplyDst: replyDst,
		Zone:     e.Zone,
	}, true
}

// addrPort converts a netlink address and port. Unmap makes an IPv4 address
// compare equal whether netlink handed it over in 4 or 16 bytes.
func addrPort(ip net.IP, port uint16) (netip.AddrPort, bool) {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(addr.Unmap(), port), true
}
