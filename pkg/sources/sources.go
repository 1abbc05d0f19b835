// Package sources watches the API server: Services, EndpointSlices and this node's Node
// object, with upstream kube-proxy's selectors. It only forwards events to handlers; what
// they mean is for the handlers (the proxiers) to decide.
package sources

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Labels that take an object away from the default proxy.
const (
	// LabelServiceProxyName marks a Service as handled by another proxy.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices of headless Services.
	LabelHeadless = v1.IsHeadlessService
)

// ServiceHandler receives Service events. No copy of the objects is kept, so an update
// carries only the new state, and a deletion that a relist found (the watch missed it)
// only the Service's namespace and name.
type ServiceHandler interface {
	OnServiceAdd(svc *v1.Service)
	OnServiceUpdate(svc *v1.Service)
	OnServiceDelete(svc *v1.Service)
	OnServicesSynced()
}

// EndpointSliceHandler receives EndpointSlice events, as ServiceHandler does; a
// deletion found by a relist carries the slice's namespace, name and address type.
type EndpointSliceHandler interface {
	OnEndpointSliceAdd(slice *discovery.EndpointSlice)
	OnEndpointSliceUpdate(slice *discovery.EndpointSlice)
	OnEndpointSliceDelete(slice *discovery.EndpointSlice)
	OnEndpointSlicesSynced()
}

// NodeHandler receives events about this node's Node object.
type NodeHandler interface {
	OnNodeAdd(node *v1.Node)
	OnNodeUpdate(old, node *v1.Node)
	OnNodeDelete(node *v1.Node)
	OnNodeSynced()
}

// fieldClusterIP is the Service field the watch's field selector looks at.
const fieldClusterIP = "spec.clusterIP"

// The watches' selectors, as upstream sets them for both Services and EndpointSlices:
// services another proxy claims are not ours, and services (and their slices) labelled
// headless have no virtual IP to program. Services without a cluster IP are left out by
// the field selector. Selectors (for the API server) and ServiceSelected /
// EndpointSliceSelected (for `kproxy render`'s manifests) are both derived from these, so
// the daemon and render see the same objects.
var (
	watchLabels   = withoutLabels(LabelServiceProxyName, LabelHeadless)
	serviceFields = fields.OneTermNotEqualSelector(fieldClusterIP, v1.ClusterIPNone)
)

// withoutLabels selects objects that carry none of keys.
func withoutLabels(keys ...string) labels.Selector {
	sel := labels.NewSelector()
	for _, k := range keys {
		r, err := labels.NewRequirement(k, selection.DoesNotExist, nil)
		if err != nil {
			// The keys are constants: only a typo in this file gets here.
			panic(fmt.Sprintf("label selector on %q: %v", k, err))
		}
		sel = sel.Add(*r)
	}
	return sel
}

// Selectors returns the list options of the Service and EndpointSlice watches.
func Selectors() (services, slices metav1.ListOptions) {
	services = metav1.ListOptions{LabelSelector: watchLabels.String(), FieldSelector: serviceFields.String()}
	slices = metav1.ListOptions{LabelSelector: watchLabels.String()}
	return services, slices
}

// ServiceSelected reports whether the Service watch delivers svc.
func ServiceSelected(svc *v1.Service) bool {
	return watchLabels.Matches(labels.Set(svc.Labels)) &&
		serviceFields.Matches(fields.Set{fieldClusterIP: svc.Spec.ClusterIP})
}

// EndpointSliceSelected reports whether the EndpointSlice watch delivers slice.
func EndpointSliceSelected(slice *discovery.EndpointSlice) bool {
	return watchLabels.Matches(labels.Set(slice.Labels))
}

// stripManagedFields drops server-side-apply bookkeeping, which is large and never read,
// before the Node enters its informer's cache.
func stripManagedFields(obj interface{}) (interface{}, error) {
	if accessor, ok := obj.(metav1.ObjectMetaAccessor); ok {
		accessor.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}

// slim drops from a listed or watched Service or EndpointSlice what kproxy never reads
// and what can be most of its size: the server-side-apply bookkeeping and kubectl's copy
// of the whole object in the last-applied annotation. A reflector holds every object of
// the initial list at once (until the list ends, to tell which objects a relist no
// longer has), so on a real cluster this is memory at start.
func slim(obj runtime.Object) {
	_, _ = stripManagedFields(obj)
	if accessor, ok := obj.(metav1.ObjectMetaAccessor); ok {
		delete(accessor.GetObjectMeta().GetAnnotations(), v1.LastAppliedConfigAnnotation)
	}
}

// slimWatch slims the objects of w's events as they arrive. Bookmarks pass untouched:
// the one that ends a streamed initial list says so in an annotation.
func slimWatch(w watch.Interface, err error) (watch.Interface, error) {
	if err != nil {
		return nil, err
	}
	return watch.Filter(w, func(e watch.Event) (watch.Event, bool) {
		if e.Type != watch.Bookmark && e.Type != watch.Error {
			slim(e.Object)
		}
		return e, true
	}), nil
}

// slimList slims the items of a list, for API servers that do not stream lists.
func slimList(list runtime.Object, err error) (runtime.Object, error) {
	if err != nil {
		return nil, err
	}
	return list, meta.EachListItem(list, func(item runtime.Object) error {
		slim(item)
		return nil
	})
}

// Run starts the watches and returns once they are running; handlers' Synced methods are
// called as each watch completes its initial list. It stops when ctx is done.
//
// Services and EndpointSlices are watched by reflectors that keep no cache (forwarder):
// the trackers hold what kproxy needs of them. Only this node's Node, one object whose
// old state the handler compares, goes through an informer.
func Run(ctx context.Context, client kubernetes.Interface, nodeName string, resync time.Duration,
	svcH ServiceHandler, sliceH EndpointSliceHandler, nodeH NodeHandler) error {
	logger := klog.FromContext(ctx)
	svcOpts, sliceOpts := Selectors()
	listed := func(what string, synced func()) func() {
		return func() {
			logger.V(2).Info("Initial list done", "resource", what)
			synced()
		}
	}

	services := &forwarder[*v1.Service]{
		onAdd: svcH.OnServiceAdd, onUpdate: svcH.OnServiceUpdate, onDelete: svcH.OnServiceDelete,
		detail: func(*v1.Service) string { return "" },
		gone: func(namespace, name, _ string) *v1.Service {
			return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
		},
		synced: listed("services", svcH.OnServicesSynced),
		known:  map[string]string{},
	}
	svcLW := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector, o.FieldSelector = svcOpts.LabelSelector, svcOpts.FieldSelector
			return slimList(client.CoreV1().Services(metav1.NamespaceAll).List(ctx, o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector, o.FieldSelector = svcOpts.LabelSelector, svcOpts.FieldSelector
			return slimWatch(client.CoreV1().Services(metav1.NamespaceAll).Watch(ctx, o))
		},
	}, client)

	slices := &forwarder[*discovery.EndpointSlice]{
		onAdd: sliceH.OnEndpointSliceAdd, onUpdate: sliceH.OnEndpointSliceUpdate, onDelete: sliceH.OnEndpointSliceDelete,
		detail: func(s *discovery.EndpointSlice) string { return string(s.AddressType) },
		gone: func(namespace, name, addressType string) *discovery.EndpointSlice {
			return &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, AddressType: discovery.AddressType(addressType)}
		},
		synced: listed("endpointslices", sliceH.OnEndpointSlicesSynced),
		known:  map[string]string{},
	}
	sliceLW := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = sliceOpts.LabelSelector
			return slimList(client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sliceOpts.LabelSelector
			return slimWatch(client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch(ctx, o))
		},
	}, client)

	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", nodeName).String()
		}),
		informers.WithTransform(stripManagedFields))
	nodeInformer := nodeFactory.Core().V1().Nodes().Informer()
	if _, err := nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { with[*v1.Node](obj, nodeH.OnNodeAdd) },
		UpdateFunc: func(old, cur interface{}) { with2(old, cur, nodeH.OnNodeUpdate) },
		DeleteFunc: func(obj interface{}) { with[*v1.Node](unwrap(obj), nodeH.OnNodeDelete) },
	}); err != nil {
		return fmt.Errorf("adding node handler: %w", err)
	}

	go services.run(ctx, "services", svcLW, &v1.Service{})
	go slices.run(ctx, "endpointslices", sliceLW, &discovery.EndpointSlice{})
	nodeFactory.Start(ctx.Done())
	go func() {
		if !cache.WaitForCacheSync(ctx.Done(), nodeInformer.HasSynced) {
			return
		}
		listed("node", nodeH.OnNodeSynced)()
	}()
	return nil
}

// unwrap returns the last known state of an object whose deletion the watch missed.
func unwrap(obj interface{}) interface{} {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

func with[T any](obj interface{}, fn func(T)) {
	if o, ok := obj.(T); ok {
		fn(o)
	}
}

func with2[T any](old, cur interface{}, fn func(T, T)) {
	o, ok1 := old.(T)
	c, ok2 := cur.(T)
	if ok1 && ok2 {
		fn(o, c)
	}
}
