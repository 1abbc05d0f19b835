package conntrack

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/model"
)

// Reconciler deletes the UDP conntrack entries of one IP family that no longer
// lead to a serving endpoint. It keeps no state between calls: every cleanup
// compares the whole table with the whole snapshot, so a cleanup that failed
// or missed entries is made good by the next one.
type Reconciler struct {
	family v1.IPFamily
	ct     Interface
}

// NewReconciler returns a Reconciler for family's conntrack table ct.
func NewReconciler(family v1.IPFamily, ct Interface) *Reconciler {
	return &Reconciler{family: family, ct: ct}
}

// servingSet is the set of serving endpoints (IP and port) of a frontend.
type servingSet map[netip.AddrPort]struct{}

// frontends indexes the snapshot's UDP service frontends by what a conntrack
// entry's original destination is compared with.
type frontends struct {
	// vips maps clusterIP:port, loadBalancerVIP:port and externalIP:port to
	// the serving endpoints behind it.
	vips map[netip.AddrPort]servingSet
	// nodePorts maps a node port to the serving endpoints behind it. Only
	// service ports with at least one serving endpoint are here.
	nodePorts map[uint16]servingSet
}

// CleanStaleEntries deletes the UDP conntrack entries that point at a service
// frontend but were DNATed to something that is no longer one of its serving
// endpoints. The rules are upstream kube-proxy's:
//
//   - Every UDP service port of snap is reconciled, not only those that
//     changed; the endpoints taken are those that are serving, whatever their
//     readiness, termination, traffic policy or topology, because a flow that
//     was already admitted should keep its endpoint as long as it serves.
//   - An entry whose original destination IP:port is the service port's
//     cluster IP, a load balancer VIP or an external IP (with the service
//     port) is deleted when its reply source IP:port is not a serving
//     endpoint. With no serving endpoint at all, every such entry goes.
//   - An entry whose original destination port is the service port's node
//     port (whatever the destination IP: the node has many) is deleted when
//     its reply source is not a serving endpoint, but only if the service
//     port has at least one serving endpoint; with none, node port entries
//     are left alone.
//   - The two tests are independent: an entry that passes one may still be
//     deleted by the other (a cluster IP port that equals another service's
//     node port), as upstream's are.
//
// Entries of other protocols are never listed, so never deleted. When two UDP
// service ports share a frontend (two services with the same external IP and
// port) an entry is kept if it leads to a serving endpoint of either; upstream
// keeps whichever service its map iteration saw last.
//
// The duration is observed in conntrack_reconciler_sync_duration_seconds and
// the deleted entries counted in conntrack_reconciler_deleted_entries_total,
// also when deleting fails part-way. Errors are for the caller to log: the
// rules are already in place, and the next cleanup retries.
func (r *Reconciler) CleanStaleEntries(ctx context.Context, snap *model.Snapshot) error {
	start := time.Now()
	family := string(r.family)
	defer func() {
		metrics.ConntrackReconcilerSyncDuration.WithLabelValues(family).Observe(time.Since(start).Seconds())
	}()
	if snap == nil {
		return errors.New("conntrack cleanup: nil snapshot")
	}
	logger := klog.FromContext(ctx)

	fe := indexFrontends(snap)
	if len(fe.vips) == 0 && len(fe.nodePorts) == 0 {
		// No UDP service: nothing can be stale, and listing a large table
		// would be wasted work.
		logger.V(4).Info("No UDP service frontends, skipping conntrack cleanup")
		return nil
	}

	flows, err := r.ct.ListUDP(ctx)
	if err != nil {
		return fmt.Errorf("conntrack cleanup: %w", err)
	}

	var stale []Flow
	for _, f := range flows {
		if f.Protocol != v1.ProtocolUDP {
			// ListUDP promises UDP only; this guards the promise, because
			// deleting a TCP entry would break a live connection.
			continue
		}
		if fe.isStale(f) {
			logger.V(5).Info("Stale conntrack entry", "flow", f.String())
			stale = append(stale, f)
		}
	}

	n, err := r.ct.Delete(ctx, stale)
	metrics.ConntrackReconcilerDeletedEntriesTotal.WithLabelValues(family).Add(float64(n))
	if err != nil {
		return fmt.Errorf("conntrack cleanup: %d of %d stale entries deleted: %w", n, len(stale), err)
	}
	logger.V(4).Info("Finished conntrack cleanup",
		"entries", len(flows), "stale", len(stale), "deleted", n, "took", time.Since(start))
	return nil
}

// isStale applies CleanStaleEntries's two tests to one UDP flow.
func (fe frontends) isStale(f Flow) bool {
	if serving, ok := fe.vips[f.OrigDst]; ok {
		if _, ok := serving[f.ReplySrc]; !ok {
			return true
		}
	}
	if serving, ok := fe.nodePorts[f.OrigDst.Port()]; ok {
		if _, ok := serving[f.ReplySrc]; !ok {
			return true
		}
	}
	return false
}

// indexFrontends builds the frontend index of snap's UDP service ports.
func indexFrontends(snap *model.Snapshot) frontends {
	fe := frontends{
		vips:      make(map[netip.AddrPort]servingSet),
		nodePorts: make(map[uint16]servingSet),
	}
	for name, svc := range snap.Services {
		if svc == nil || name.Protocol != v1.ProtocolUDP {
			continue
		}
		port, ok := toPort(svc.Port)
		if !ok {
			continue
		}
		serving := servingSet{}
		for _, ep := range snap.Endpoints[name] {
			epPort, ok := toPort(ep.Port)
			if ep.Serving && ep.IP.IsValid() && ok {
				serving[netip.AddrPortFrom(ep.IP.Unmap(), epPort)] = struct{}{}
			}
		}

		// The cluster IP is invalid when the service has none of this
		// family; a flow never has an invalid address, so it would not
		// match, but leaving it out keeps the index honest.
		vips := make([]netip.Addr, 0, 1+len(svc.LoadBalancerVIPs)+len(svc.ExternalIPs))
		vips = append(vips, svc.ClusterIP)
		vips = append(vips, svc.LoadBalancerVIPs...)
		vips = append(vips, svc.ExternalIPs...)
		for _, ip := range vips {
			if ip.IsValid() {
				key := netip.AddrPortFrom(ip.Unmap(), port)
				fe.vips[key] = union(fe.vips[key], serving)
			}
		}

		if nodePort, ok := toPort(svc.NodePort); ok && len(serving) > 0 {
			fe.nodePorts[nodePort] = union(fe.nodePorts[nodePort], serving)
		}
	}
	return fe
}

// union returns a set holding both a's and b's members. It never modifies b,
// which may be shared between frontends; a nil a returns b itself.
func union(a, b servingSet) servingSet {
	if a == nil {
		return b
	}
	out := make(servingSet, len(a)+len(b))
	for k := range a {
		out[k] = struct{}{}
	}
	for k := range b {
		out[k] = struct{}{}
	}
	return out
}

// toPort converts a model port to a conntrack port, reporting false for 0
// (no port) and for values no packet can carry.
func toPort(p int32) (uint16, bool) {
	if p <= 0 || p > math.MaxUint16 {
		return 0, false
	}
	return uint16(p), true
}
