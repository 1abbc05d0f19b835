package sources

import (
	"slices"
	"testing"

	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// sliceEvents records what a forwarder of EndpointSlices delivers.
type sliceEvents struct {
	got    []string
	synced int
}

func (e *sliceEvents) forwarder() *forwarder[*discovery.EndpointSlice] {
	event := func(kind string) func(*discovery.EndpointSlice) {
		return func(s *discovery.EndpointSlice) {
			e.got = append(e.got, kind+" "+s.Namespace+"/"+s.Name+" "+string(s.AddressType))
		}
	}
	return &forwarder[*discovery.EndpointSlice]{
		onAdd: event("add"), onUpdate: event("update"), onDelete: event("delete"),
		detail: func(s *discovery.EndpointSlice) string { return string(s.AddressType) },
		gone: func(namespace, name, addressType string) *discovery.EndpointSlice {
			return &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, AddressType: discovery.AddressType(addressType)}
		},
		synced: func() { e.synced++ },
		known:  map[string]string{},
	}
}

func (e *sliceEvents) take() []string {
	got := e.got
	e.got = nil
	return got
}

func slice(name string, family discovery.AddressType) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, AddressType: family}
}

// TestForwarderDeliversWhatAnInformerWould: without keeping the objects, the store
// still tells the handlers what an informer's would: the first list as adds and one
// "synced", watch events as adds, updates and deletes, and a relist (after a watch
// could not be resumed) as updates of the objects still there, adds of new ones and
// deletes, with the address type the tracker needs, of those that went away meanwhile.
func TestForwarderDeliversWhatAnInformerWould(t *testing.T) {
	e := &sliceEvents{}
	f := e.forwarder()
	check := func(when string, want ...string) {
		t.Helper()
		got := e.take()
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: delivered %q, want %q", when, got, want)
		}
	}

	if err := f.Replace([]interface{}{slice("a", discovery.AddressTypeIPv4), slice("b", discovery.AddressTypeIPv6)}, "1"); err != nil {
		t.Fatal(err)
	}
	check("first list", "add ns/a IPv4", "add ns/b IPv6")
	if e.synced != 1 {
		t.Errorf("synced %d times after the first list, want 1", e.synced)
	}

	for _, step := range []func() error{
		func() error { return f.Add(slice("c", discovery.AddressTypeIPv4)) },
		func() error { return f.Update(slice("a", discovery.AddressTypeIPv4)) },
		// A watch may report as modified an object this store has not seen.
		func() error { return f.Update(slice("d", discovery.AddressTypeIPv4)) },
		func() error {
			return f.Delete(cache.DeletedFinalStateUnknown{Key: "ns/d", Obj: slice("d", discovery.AddressTypeIPv4)})
		},
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	check("watch events", "add ns/c IPv4", "update ns/a IPv4", "add ns/d IPv4", "delete ns/d IPv4")

	// The watch expired; meanwhile b and c were deleted and e created.
	if err := f.Replace([]interface{}{slice("a", discovery.AddressTypeIPv4), slice("e", discovery.AddressTypeIPv4)}, "9"); err != nil {
		t.Fatal(err)
	}
	check("relist", "update ns/a IPv4", "add ns/e IPv4", "delete ns/b IPv6", "delete ns/c IPv4")
	if e.synced != 1 {
		t.Errorf("synced %d times after a relist, want 1", e.synced)
	}
	if err := f.Add("not a slice"); err == nil {
		t.Error("an object of another type was accepted")
	}
}
