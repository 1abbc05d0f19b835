package sources

import (
	"context"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
)

func TestSelectorsMatchUpstream(t *testing.T) {
	svc, slices := Selectors()
	const labels = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
	if svc.LabelSelector != labels || svc.FieldSelector != "spec.clusterIP!=None" {
		t.Errorf("service selectors %q / %q", svc.LabelSelector, svc.FieldSelector)
	}
	if slices.LabelSelector != labels {
		t.Errorf("slice selector %q", slices.LabelSelector)
	}
}

// TestSelectedAgreesWithSelectors checks the manifest filters (used by `kproxy render`)
// against the list options the API server applies, parsed back as the server would.
func TestSelectedAgreesWithSelectors(t *testing.T) {
	svcOpts, sliceOpts := Selectors()
	svcLabels, err := labels.Parse(svcOpts.LabelSelector)
	if err != nil {
		t.Fatal(err)
	}
	svcFields, err := fields.ParseSelector(svcOpts.FieldSelector)
	if err != nil {
		t.Fatal(err)
	}
	sliceLabels, err := labels.Parse(sliceOpts.LabelSelector)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		labels     map[string]string
		clusterIP  string
		svc, slice bool // whether the watches deliver the Service, and a slice so labelled
	}{
		{nil, "10.96.0.1", true, true},
		{map[string]string{"app": "web", discovery.LabelServiceName: "web"}, "10.96.0.1", true, true},
		{map[string]string{LabelServiceProxyName: "other"}, "10.96.0.1", false, false},
		{map[string]string{LabelServiceProxyName: ""}, "10.96.0.1", false, false},
		{map[string]string{LabelHeadless: ""}, "10.96.0.1", false, false},
		{nil, v1.ClusterIPNone, false, true},
		{nil, "", true, true}, // ExternalName: delivered, then given no rules
	} {
		svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Labels: tc.labels}, Spec: v1.ServiceSpec{ClusterIP: tc.clusterIP}}
		server := svcLabels.Matches(labels.Set(tc.labels)) && svcFields.Matches(fields.Set{"spec.clusterIP": tc.clusterIP})
		if got := ServiceSelected(svc); got != tc.svc || server != tc.svc {
			t.Errorf("Service %v clusterIP %q: selected %t, by the list options %t, want %t", tc.labels, tc.clusterIP, got, server, tc.svc)
		}
		slice := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Labels: tc.labels}}
		server = sliceLabels.Matches(labels.Set(tc.labels))
		if got := EndpointSliceSelected(slice); got != tc.slice || server != tc.slice {
			t.Errorf("EndpointSlice %v: selected %t, by the list options %t, want %t", tc.labels, got, server, tc.slice)
		}
	}
}

type recorder struct {
	mu                         sync.Mutex
	services, slices, nodes    []string
	deleted                    []string
	svcSynced, sliceSync, node bool
}

func (r *recorder) add(list *[]string, name string) {
	r.mu.Lock()
	*list = append(*list, name)
	r.mu.Unlock()
}
func (r *recorder) OnServiceAdd(s *v1.Service) { r.add(&r.services, s.Name) }
func (r *recorder) OnServiceUpdate(s *v1.Service) {
	r.add(&r.services, s.Name+"(updated)")
}
func (r *recorder) OnServiceDelete(s *v1.Service) { r.add(&r.deleted, s.Name) }
func (r *recorder) OnServicesSynced()             { r.mu.Lock(); r.svcSynced = true; r.mu.Unlock() }
func (r *recorder) OnEndpointSliceAdd(s *discovery.EndpointSlice) {
	r.add(&r.slices, s.Name)
}
func (r *recorder) OnEndpointSliceUpdate(s *discovery.EndpointSlice) {}
func (r *recorder) OnEndpointSliceDelete(s *discovery.EndpointSlice) {}
func (r *recorder) OnEndpointSlicesSynced()                          { r.mu.Lock(); r.sliceSync = true; r.mu.Unlock() }
func (r *recorder) OnNodeAdd(n *v1.Node)                             { r.add(&r.nodes, n.Name) }
func (r *recorder) OnNodeUpdate(_, n *v1.Node)                       {}
func (r *recorder) OnNodeDelete(n *v1.Node)                          {}
func (r *recorder) OnNodeSynced()                                    { r.mu.Lock(); r.node = true; r.mu.Unlock() }

func TestRunDeliversEventsAndSyncs(t *testing.T) {
	client := fake.NewClientset(
		&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "x"}}}},
		&discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1"}},
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &recorder{}
	if err := Run(ctx, client, "node-1", time.Hour, rec, rec, rec); err != nil {
		t.Fatal(err)
	}
	synced := func(ctx context.Context) (bool, error) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.svcSynced && rec.sliceSync && rec.node && len(rec.services) == 1 && len(rec.slices) == 1, nil
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, synced); err != nil {
		t.Fatalf("initial list not delivered: %+v", rec)
	}
	if err := client.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := func(ctx context.Context) (bool, error) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.deleted) == 1, nil
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, deleted); err != nil {
		t.Fatalf("delete not delivered: %+v", rec)
	}
}

// fat is a Service as a real cluster may hold it: server-side-apply bookkeeping, kubectl's
// copy of the whole object, and an annotation kproxy may read.
func fat(name string) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name,
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{}}`)}}},
		Annotations: map[string]string{
			v1.LastAppliedConfigAnnotation:        `{"apiVersion":"v1","kind":"Service"}`,
			"service.kubernetes.io/topology-mode": "Auto",
		}}}
}

func checkSlim(t *testing.T, what string, svc *v1.Service) {
	t.Helper()
	if svc.ManagedFields != nil {
		t.Errorf("%s: managed fields kept", what)
	}
	if _, ok := svc.Annotations[v1.LastAppliedConfigAnnotation]; ok {
		t.Errorf("%s: last-applied annotation kept", what)
	}
	if svc.Annotations["service.kubernetes.io/topology-mode"] != "Auto" {
		t.Errorf("%s: other annotations lost: %v", what, svc.Annotations)
	}
}

func TestListsAndWatchesAreSlimmed(t *testing.T) {
	list, err := slimList(&v1.ServiceList{Items: []v1.Service{*fat("a"), *fat("b")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.(*v1.ServiceList).Items {
		checkSlim(t, "listed", &list.(*v1.ServiceList).Items[i])
	}

	source := watch.NewFake()
	w, err := slimWatch(source, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	bookmark := fat("")
	bookmark.Annotations[metav1.InitialEventsAnnotationKey] = "true"
	go func() {
		source.Add(fat("c"))
		source.Action(watch.Bookmark, bookmark)
	}()
	checkSlim(t, "watched", (<-w.ResultChan()).Object.(*v1.Service))
	got := (<-w.ResultChan()).Object.(*v1.Service)
	if got.Annotations[metav1.InitialEventsAnnotationKey] != "true" || got.ManagedFields == nil {
		t.Errorf("bookmark changed: %+v", got.ObjectMeta)
	}
}
