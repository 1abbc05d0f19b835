// Package fake is a stateful in-memory conntrack.Interface for tests.
//
// It holds a table of flows, not a log of calls: Delete removes flows from the
// table, and tests assert on Flows(), the entries a real kernel would still
// hold, so they do not depend on how the code under test reached that state.
//
// Like the kernel's, the table is a set keyed by the whole flow, and it holds
// entries of every protocol and both families, while ListUDP returns only the
// UDP entries of the fake's family (a netlink dump is per family).
package fake

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/conntrack"
)

// Fake is an in-memory conntrack.Interface for one IP family. The zero value
// is not usable; call New. It is safe for concurrent use.
type Fake struct {
	family v1.IPFamily

	mu    sync.Mutex
	flows map[conntrack.Flow]struct{}
	// listErrs and deleteErrs are returned, in order, by the next ListUDP
	// and Delete calls instead of doing anything.
	listErrs, deleteErrs []error
}

var _ conntrack.Interface = (*Fake)(nil)

// New returns a Fake for family holding flows.
func New(family v1.IPFamily, flows ...conntrack.Flow) *Fake {
	f := &Fake{family: family, flows: make(map[conntrack.Flow]struct{})}
	f.Add(flows...)
	return f
}

// Add puts flows into the table; a flow already there stays one entry.
func (f *Fake) Add(flows ...conntrack.Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fl := range flows {
		f.flows[fl] = struct{}{}
	}
}

// Flows returns every entry in the table, whatever its protocol or family,
// sorted by their String so tests can compare them directly.
func (f *Fake) Flows() []conntrack.Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return sorted(f.flows, func(conntrack.Flow) bool { return true })
}

// Has reports whether fl is in the table.
func (f *Fake) Has(fl conntrack.Flow) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.flows[fl]
	return ok
}

// FailList makes the next len(errs) ListUDP calls return errs, in order.
func (f *Fake) FailList(errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listErrs = append(f.listErrs, errs...)
}

// FailDelete makes the next len(errs) Delete calls return errs, in order,
// without deleting anything.
func (f *Fake) FailDelete(errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleteErrs = append(f.deleteErrs, errs...)
}

// ListUDP implements conntrack.Interface: the UDP entries of the fake's
// family.
func (f *Fake) ListUDP(ctx context.Context) ([]conntrack.Flow, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fake conntrack list: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.listErrs) > 0 {
		err := f.listErrs[0]
		f.listErrs = f.listErrs[1:]
		return nil, err
	}
	return sorted(f.flows, func(fl conntrack.Flow) bool {
		return fl.Protocol == v1.ProtocolUDP && familyOf(fl) == f.family
	}), nil
}

// Delete implements conntrack.Interface: it removes the entries equal to one
// of flows and counts them. As the netlink implementation works on a dump of
// its own family, entries of the other family are never deleted.
func (f *Fake) Delete(ctx context.Context, flows []conntrack.Flow) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("fake conntrack delete: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.deleteErrs) > 0 {
		err := f.deleteErrs[0]
		f.deleteErrs = f.deleteErrs[1:]
		return 0, err
	}
	n := 0
	for _, fl := range flows {
		if _, ok := f.flows[fl]; ok && familyOf(fl) == f.family {
			delete(f.flows, fl)
			n++
		}
	}
	return n, nil
}

// familyOf is the family of fl's original destination; a flow's addresses
// are all of one family.
func familyOf(fl conntrack.Flow) v1.IPFamily {
	if fl.OrigDst.Addr().Unmap().Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// sorted returns the flows that keep accepts, in String order.
func sorted(flows map[conntrack.Flow]struct{}, keep func(conntrack.Flow) bool) []conntrack.Flow {
	out := make([]conntrack.Flow, 0, len(flows))
	for fl := range flows {
		if keep(fl) {
			out = append(out, fl)
		}
	}
	slices.SortFunc(out, func(a, b conntrack.Flow) int { return strings.Compare(a.String(), b.String()) })
	return out
}
