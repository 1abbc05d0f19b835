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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
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

// ServiceHandler receives Service events. Deleted objects are always unwrapped.
type ServiceHandler interface {
	OnServiceAdd(svc *v1.Service)
	OnServiceUpdate(old, svc *v1.Service)
	OnServiceDelete(svc *v1.Service)
	OnServicesSynced()
}

// EndpointSliceHandler receives EndpointSlice events.
type EndpointSliceHandler interface {
	OnEndpointSliceAdd(slice *discovery.EndpointSlice)
	OnEndpointSliceUpdate(old, slice *discovery.EndpointSlice)
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
// before objects enter the informer caches.
func stripManagedFields(obj interface{}) (interface{}, error) {
	if accessor, ok := obj.(metav1.ObjectMetaAccessor); ok {
		accessor.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}

// Run starts the watches and returns once they are running; handlers' Synced methods are
// called as each cache completes its initial list. It stops when ctx is done.
func Run(ctx context.Context, client kubernetes.Interface, nodeName string, resync time.Duration,
	svcH ServiceHandler, sliceH EndpointSliceHandler, nodeH NodeHandler) error {
	logger := klog.FromContext(ctx)
	svcOpts, sliceOpts := Selectors()

	svcFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector, o.FieldSelector = svcOpts.LabelSelector, svcOpts.FieldSelector
		}),
		informers.WithTransform(stripManagedFields))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sliceOpts.LabelSelector }),
		informers.WithTransform(stripManagedFields))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", nodeName).String()
		}),
		informers.WithTransform(stripManagedFields))

	svcInformer := svcFactory.Core().V1().Services().Informer()
	if _, err := svcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { with[*v1.Service](obj, svcH.OnServiceAdd) },
		UpdateFunc: func(old, cur interface{}) { with2(old, cur, svcH.OnServiceUpdate) },
		DeleteFunc: func(obj interface{}) { with[*v1.Service](unwrap(obj), svcH.OnServiceDelete) },
	}); err != nil {
		return fmt.Errorf("adding service handler: %w", err)
	}
	sliceInformer := sliceFactory.Discovery().V1().EndpointSlices().Informer()
	if _, err := sliceInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { with[*discovery.EndpointSlice](obj, sliceH.OnEndpointSliceAdd) },
		UpdateFunc: func(old, cur interface{}) { with2(old, cur, sliceH.OnEndpointSliceUpdate) },
		DeleteFunc: func(obj interface{}) { with[*discovery.EndpointSlice](unwrap(obj), sliceH.OnEndpointSliceDelete) },
	}); err != nil {
		return fmt.Errorf("adding endpointslice handler: %w", err)
	}
	nodeInformer := nodeFactory.Core().V1().Nodes().Informer()
	if _, err := nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { with[*v1.Node](obj, nodeH.OnNodeAdd) },
		UpdateFunc: func(old, cur interface{}) { with2(old, cur, nodeH.OnNodeUpdate) },
		DeleteFunc: func(obj interface{}) { with[*v1.Node](unwrap(obj), nodeH.OnNodeDelete) },
	}); err != nil {
		return fmt.Errorf("adding node handler: %w", err)
	}

	svcFactory.Start(ctx.Done())
	sliceFactory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
	for _, w := range []struct {
		what     string
		informer cache.SharedIndexInformer
		synced   func()
	}{
		{"services", svcInformer, svcH.OnServicesSynced},
		{"endpointslices", sliceInformer, sliceH.OnEndpointSlicesSynced},
		{"node", nodeInformer, nodeH.OnNodeSynced},
	} {
		go func() {
			if !cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced) {
				return
			}
			logger.V(2).Info("Initial list done", "resource", w.what)
			w.synced()
		}()
	}
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
