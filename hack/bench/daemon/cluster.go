package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/synth"
	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// managedBy marks the benchmark's EndpointSlices, so that the EndpointSlice controllers
// leave them alone (the Services have no selector either).
const managedBy = "bench-daemon.kproxy.dev"

// addedNamespace holds the services the partial syncs add and remove.
const addedNamespace = "bench"

// clusterUp starts a fresh e2e cluster (one left over by a killed run is torn down first)
// without kproxy, and connects to it.
func clusterUp(ctx context.Context, cfg config) (*framework.Cluster, error) {
	stateDir := stateDir(cfg)
	if _, err := os.Stat(stateDir); err == nil {
		if err := clusterScript(ctx, cfg, "hack/cluster-down.sh"); err != nil {
			return nil, fmt.Errorf("tearing down the leftover cluster %s: %w", cfg.Cluster, err)
		}
	}
	if err := clusterScript(ctx, cfg, "hack/cluster-up.sh"); err != nil {
		return nil, err
	}
	return framework.Connect(stateDir, true)
}

func clusterDown(cfg config) error {
	// Not the run's context: a cluster is torn down even after a signal.
	return clusterScript(context.Background(), cfg, "hack/cluster-down.sh")
}

func stateDir(cfg config) string {
	return filepath.Join(os.TempDir(), "kproxy-cluster", cfg.Cluster)
}

func clusterScript(ctx context.Context, cfg config, script string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(cfg.Repo, script))
	cmd.Dir = cfg.Repo
	cmd.Env = append(os.Environ(), "CLUSTER_NAME="+cfg.Cluster, "STATE_DIR="+stateDir(cfg),
		"NODES="+strconv.Itoa(cfg.Nodes), "PODS_PER_NODE=1", "KPROXY=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", script, err, out)
	}
	return nil
}

// objects is the benchmark's side of the API server: the services and slices of one
// shape, loaded once, changed by the partial syncs and the churn, and put back.
type objects struct {
	client kubernetes.Interface
	shape  synth.Shape
	// first[i] is service i's first EndpointSlice as the API server last returned it: the
	// one every endpoint change edits.
	mu      sync.Mutex
	first   []*discovery.EndpointSlice
	changed map[int]bool
	// nextAddress and nextAdded number replacement endpoints and added services, so that
	// no change repeats an earlier one.
	nextAddress, nextAdded int
}

// newObjects connects with a client that writes as fast as the API server takes it.
func newObjects(c *framework.Cluster, shape synth.Shape) (*objects, error) {
	rc := rest.CopyConfig(c.RESTConfig)
	rc.QPS, rc.Burst = 5000, 10000
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &objects{client: client, shape: shape, first: make([]*discovery.EndpointSlice, shape.Services), changed: map[int]bool{}}, nil
}

// load creates the namespaces, then every service and its slices.
func (o *objects) load(ctx context.Context) error {
	for i := range min(100, o.shape.Services) {
		ns, _ := synth.ServiceName(i)
		if err := o.createNamespace(ctx, ns); err != nil {
			return err
		}
	}
	if err := o.createNamespace(ctx, addedNamespace); err != nil {
		return err
	}
	return parallel(ctx, o.shape.Services, func(i int) error { return o.loadService(ctx, i) })
}

// parallel runs fn(0..n-1) from 32 goroutines, so that the API server, not the round
// trips, sets the pace; it stops at the first error.
func parallel(ctx context.Context, n int, fn func(i int) error) error {
	const workers = 32
	idx := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range idx {
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var err error
feed:
	for i := range n {
		select {
		case idx <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(idx)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

func (o *objects) createNamespace(ctx context.Context, name string) error {
	_, err := o.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return nil
}

func (o *objects) loadService(ctx context.Context, i int) error {
	if err := o.createServiceObject(ctx, synth.Service(i)); err != nil {
		return err
	}
	created, err := o.createEndpointSlices(ctx, o.shape.Slices(i))
	if err != nil {
		return err
	}
	o.mu.Lock()
	o.first[i] = created[0]
	o.mu.Unlock()
	return nil
}

// createServiceObject writes a service; the API server allocates its cluster IP from its
// own service range (the generated one is the harness's).
func (o *objects) createServiceObject(ctx context.Context, svc *v1.Service) error {
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "", nil
	if _, err := o.client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return nil
}

// createEndpointSlices writes slices with the benchmark's managed-by label.
func (o *objects) createEndpointSlices(ctx context.Context, slices []*discovery.EndpointSlice) ([]*discovery.EndpointSlice, error) {
	var out []*discovery.EndpointSlice
	for _, sl := range slices {
		sl.Labels[discovery.LabelManagedBy] = managedBy
		created, err := o.client.DiscoveryV1().EndpointSlices(sl.Namespace).Create(ctx, sl, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("endpointslice %s/%s: %w", sl.Namespace, sl.Name, err)
		}
		out = append(out, created)
	}
	return out, nil
}

// portName is the service port every generated service has.
func portName(namespace, name string) model.ServicePortName {
	return model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: namespace, Name: name}, Port: "http", Protocol: v1.ProtocolTCP}
}

// serviceChain is the KUBE-SVC chain of service i.
func serviceChain(i int) string {
	return rules.ServiceChain(portName(synth.ServiceName(i)))
}

// endpointChange is one change written to the API server: service i's first endpoint
// moved to a new address, whose KUBE-SEP chain the node gets once a daemon programs it.
type endpointChange struct {
	Service int       `json:"service"`
	Chain   string    `json:"chain"`
	Trigger time.Time `json:"trigger"`
	// Written is when the API server answered the update.
	Written time.Time `json:"written"`
}

// changeEndpoint moves service i's first endpoint to a new address and stamps the slice
// with the EndpointSlice controller's trigger-time annotation, set to now: the daemons'
// programming latency metric runs from it, and so does the benchmark's.
func (o *objects) changeEndpoint(ctx context.Context, i int) (endpointChange, error) {
	o.mu.Lock()
	cur := o.first[i]
	k := o.nextAddress
	o.nextAddress++
	o.mu.Unlock()
	next := cur.DeepCopy()
	addr := synth.EndpointIP(synth.ChangedEndpointBase, k).String()
	next.Endpoints[0].Addresses = []string{addr}
	trigger := time.Now()
	if next.Annotations == nil {
		next.Annotations = map[string]string{}
	}
	next.Annotations[v1.EndpointsLastChangeTriggerTime] = trigger.UTC().Format(time.RFC3339Nano)
	updated, err := o.client.DiscoveryV1().EndpointSlices(next.Namespace).Update(ctx, next, metav1.UpdateOptions{})
	if err != nil {
		return endpointChange{}, fmt.Errorf("updating endpointslice %s/%s: %w", next.Namespace, next.Name, err)
	}
	o.mu.Lock()
	o.first[i] = updated
	o.changed[i] = true
	o.mu.Unlock()
	ns, name := synth.ServiceName(i)
	return endpointChange{
		Service: i, Trigger: trigger, Written: time.Now(),
		Chain: rules.EndpointChain(portName(ns, name), addr+":8080"),
	}, nil
}

// addedService is a service the partial syncs add and remove, in namespace "bench".
type addedService struct {
	svc    *v1.Service
	slices []*discovery.EndpointSlice
	// chain is its KUBE-SVC chain.
	chain string
}

// nextService is a new service of the cluster's shape, not written yet.
func (o *objects) nextService() addedService {
	o.mu.Lock()
	k := o.nextAdded
	o.nextAdded++
	o.mu.Unlock()
	svc, slices := o.shape.AddedService(k)
	return addedService{svc: svc, slices: slices, chain: rules.ServiceChain(portName(addedNamespace, svc.Name))}
}

func (o *objects) createSlices(ctx context.Context, a addedService) error {
	_, err := o.createEndpointSlices(ctx, a.slices)
	return err
}

func (o *objects) createService(ctx context.Context, a addedService) error {
	return o.createServiceObject(ctx, a.svc)
}

func (o *objects) deleteService(ctx context.Context, a addedService) error {
	if err := o.client.CoreV1().Services(addedNamespace).Delete(ctx, a.svc.Name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("deleting service %s/%s: %w", addedNamespace, a.svc.Name, err)
	}
	return nil
}

func (o *objects) deleteSlices(ctx context.Context, a addedService) error {
	err := o.client.DiscoveryV1().EndpointSlices(addedNamespace).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: discovery.LabelServiceName + "=" + a.svc.Name})
	if err != nil {
		return fmt.Errorf("deleting the endpointslices of %s/%s: %w", addedNamespace, a.svc.Name, err)
	}
	return nil
}

// restore puts every changed slice back as it was loaded, so that the next daemon starts
// from the same cluster.
func (o *objects) restore(ctx context.Context) error {
	o.mu.Lock()
	var changed []int
	for i := range o.changed {
		changed = append(changed, i)
	}
	o.mu.Unlock()
	return parallel(ctx, len(changed), func(k int) error {
		i := changed[k]
		orig := o.shape.Slices(i)[0]
		orig.Labels[discovery.LabelManagedBy] = managedBy
		o.mu.Lock()
		orig.ResourceVersion = o.first[i].ResourceVersion
		o.mu.Unlock()
		updated, err := o.client.DiscoveryV1().EndpointSlices(orig.Namespace).Update(ctx, orig, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("restoring endpointslice %s/%s: %w", orig.Namespace, orig.Name, err)
		}
		o.mu.Lock()
		o.first[i] = updated
		delete(o.changed, i)
		o.mu.Unlock()
		return nil
	})
}
