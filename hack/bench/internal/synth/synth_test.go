package synth

import "testing"

func TestParseShapes(t *testing.T) {
	got, err := ParseShapes("1000x5, 10kx5,100x1000")
	if err != nil {
		t.Fatal(err)
	}
	want := []Shape{{1000, 5}, {10000, 5}, {100, 1000}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("shape %d: got %v, want %v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"", "1000", "x5", "0x5", "1000x", "ax5", "20000000x1"} {
		if _, err := ParseShapes(bad); err == nil {
			t.Errorf("ParseShapes(%q): no error", bad)
		}
	}
}

// The generated addresses must not collide: a clash would merge endpoints and make the
// payload smaller than the shape says.
func TestGeneratedAddressesAreDistinct(t *testing.T) {
	s := Shape{Services: 300, Endpoints: 5}
	seen := map[string]string{}
	add := func(addr, what string) {
		if prev, ok := seen[addr]; ok {
			t.Fatalf("%s has address %s, as %s", what, addr, prev)
		}
		seen[addr] = what
	}
	for i := range s.Services {
		add(Service(i).Spec.ClusterIP, "service")
		for _, sl := range s.Slices(i) {
			for _, ep := range sl.Endpoints {
				add(ep.Addresses[0], "endpoint")
			}
		}
	}
	svc, slices := s.AddedService(3)
	add(svc.Spec.ClusterIP, "added service")
	for _, ep := range slices[0].Endpoints {
		add(ep.Addresses[0], "added endpoint")
	}
	after := s.ChangedSlice(2, 2)
	add(after.Endpoints[0].Addresses[0], "changed endpoint")
}
