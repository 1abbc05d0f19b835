package sources

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"
)

// forwarder is the store of a reflector that keeps no objects. It hands each object to
// the handlers as it arrives and then lets it go: the proxiers' trackers keep the little
// they need of it, so an informer's cache would only hold every Service and EndpointSlice
// whole a second time, as upstream's kube-proxy does. What it remembers of each object
// is its key and what announcing its deletion needs, so that a relist (after a watch
// expired) can tell which objects went away while no watch was open.
//
// T is the object type (*v1.Service, *discovery.EndpointSlice). The reflector calls the
// store from one goroutine.
type forwarder[T runtime.Object] struct {
	onAdd, onUpdate, onDelete func(T)
	// detail is what the handlers read of a deleted object besides its namespace and
	// name (an EndpointSlice's address type), and gone rebuilds such an object to
	// announce a deletion found by a relist.
	detail func(obj T) string
	gone   func(namespace, name, detail string) T
	// synced is called once, after the first list.
	synced func()

	mu sync.Mutex
	// known maps the key of every object delivered and not deleted to its detail.
	known map[string]string
	// listed is set by the first Replace: the initial list has been delivered.
	listed bool
}

var _ cache.ReflectorStore = (*forwarder[runtime.Object])(nil)

func (f *forwarder[T]) object(obj interface{}) (T, string, error) {
	o, ok := obj.(T)
	if !ok {
		var zero T
		return zero, "", fmt.Errorf("unexpected object of type %T", obj)
	}
	key, err := cache.MetaNamespaceKeyFunc(o)
	return o, key, err
}

// Add implements cache.ReflectorStore.
func (f *forwarder[T]) Add(obj interface{}) error { return f.upsert(obj) }

// Update implements cache.ReflectorStore.
func (f *forwarder[T]) Update(obj interface{}) error { return f.upsert(obj) }

// upsert delivers an added or changed object: as an add when it is new to kproxy (a watch
// may report as modified an object a relist delivered in between), else as an update.
func (f *forwarder[T]) upsert(obj interface{}) error {
	o, key, err := f.object(obj)
	if err != nil {
		return err
	}
	f.mu.Lock()
	_, seen := f.known[key]
	f.known[key] = f.detail(o)
	f.mu.Unlock()
	if seen {
		f.onUpdate(o)
	} else {
		f.onAdd(o)
	}
	return nil
}

// Delete implements cache.ReflectorStore.
func (f *forwarder[T]) Delete(obj interface{}) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	o, key, err := f.object(obj)
	if err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.known, key)
	f.mu.Unlock()
	f.onDelete(o)
	return nil
}

// Replace implements cache.ReflectorStore: the full list, first at start and again after
// a watch could not be resumed. Objects it lacks were deleted meanwhile.
func (f *forwarder[T]) Replace(list []interface{}, _ string) error {
	listed := make(map[string]bool, len(list))
	for _, obj := range list {
		_, key, err := f.object(obj)
		if err != nil {
			return err
		}
		listed[key] = true
	}
	f.mu.Lock()
	var gone []T
	for key, detail := range f.known {
		if !listed[key] {
			namespace, name, _ := cache.SplitMetaNamespaceKey(key)
			gone = append(gone, f.gone(namespace, name, detail))
			delete(f.known, key)
		}
	}
	f.mu.Unlock()
	for _, obj := range gone {
		f.onDelete(obj)
	}
	for i, obj := range list {
		if err := f.upsert(obj); err != nil {
			return err
		}
		// The store owns the list: let the objects go as they are delivered.
		list[i] = nil
	}
	if !f.listed {
		f.listed = true
		f.synced()
	}
	return nil
}

// Resync implements cache.ReflectorStore; the reflectors run without a resync period.
func (f *forwarder[T]) Resync() error { return nil }

// run runs a reflector feeding f until ctx is done. It has no resync period: a resync
// re-delivers every object to handlers that would find nothing changed.
func (f *forwarder[T]) run(ctx context.Context, name string, lw cache.ListerWatcher, expected T) {
	cache.NewReflectorWithOptions(lw, expected, f, cache.ReflectorOptions{Name: name}).RunWithContext(ctx)
}
