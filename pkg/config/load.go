package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/kube-proxy/config/v1alpha1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The only file format kproxy reads: upstream's, unchanged.
const (
	// APIVersion is the apiVersion a config file must declare.
	APIVersion = "kubeproxy.config.k8s.io/v1alpha1"
	// Kind is the kind a config file must declare.
	Kind = "KubeProxyConfiguration"
)

// StrictDecodingError lists the unknown and duplicate fields of a config
// file. Like upstream, kproxy does not refuse such a file: Decode returns the
// leniently decoded configuration together with this error as a warning, for
// the caller to log. A field that a newer kubeadm writes, or a typo, must not
// crash-loop every node of the cluster.
type StrictDecodingError struct {
	// Problems holds one entry per offending field, e.g.
	// `unknown field "iptables.masqueradeBits"`.
	Problems []string
}

// Error joins the problems into one line, worded as upstream's decoder words
// them so that searches for upstream's log line find kproxy's too.
func (e *StrictDecodingError) Error() string {
	return "strict decoding error: " + strings.Join(e.Problems, ", ")
}

// LoadFile reads the KubeProxyConfiguration file at path and decodes it (see
// Decode). Errors name the path; the warning, if any, does not, since the
// caller knows which file it asked for.
func LoadFile(path string) (*v1alpha1.KubeProxyConfiguration, *StrictDecodingError, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		// The *PathError already says which file and why.
		return nil, nil, fmt.Errorf("reading config file: %w", err)
	}
	c, warning, err := Decode(data)
	if err != nil {
		return nil, nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return c, warning, nil
}

// Decode decodes a YAML or JSON KubeProxyConfiguration and applies
// SetDefaults. It requires apiVersion kubeproxy.config.k8s.io/v1alpha1 and
// kind KubeProxyConfiguration and matches field names case-sensitively.
//
// Decoding follows upstream's two passes: strict first, and when the only
// problems are unknown or duplicate fields, the file is used as a lenient
// decoder reads it (unknown fields dropped, the last of duplicate fields
// wins) and those problems are returned as a non-nil warning. Malformed
// YAML or JSON, a wrong apiVersion or kind and values of the wrong type stay
// errors. Returned errors and warnings are one line.
func Decode(data []byte) (*v1alpha1.KubeProxyConfiguration, *StrictDecodingError, error) {
	var problems []string
	jsonData := data
	if !looksLikeJSON(data) {
		var strictErr error
		// YAMLToJSONStrict catches duplicate keys, which the plain
		// conversion silently collapses to the last one.
		jsonData, strictErr = yaml.YAMLToJSONStrict(data)
		if strictErr != nil {
			var err error
			jsonData, err = yaml.YAMLToJSON(data)
			if err != nil {
				return nil, nil, fmt.Errorf("invalid YAML: %w", singleLine{err})
			}
			problems = append(problems, oneLine(strictErr.Error()))
		}
	}

	var generic map[string]any
	if err := json.Unmarshal(jsonData, &generic); err != nil || generic == nil {
		return nil, nil, errors.New("must be a YAML or JSON object with apiVersion and kind")
	}
	if err := checkTypeMeta(generic); err != nil {
		return nil, nil, err
	}
	if errs := checkDurations(generic); len(errs) > 0 {
		return nil, nil, errors.New(JoinFieldErrors(errs))
	}

	c := &v1alpha1.KubeProxyConfiguration{}
	// The strict checks do not change what is decoded: c holds what a lenient
	// decoder would produce, whatever strictErrs says.
	strictErrs, err := kjson.UnmarshalStrict(jsonData, c)
	if err != nil {
		return nil, nil, fmt.Errorf("decoding: %w", singleLine{err})
	}
	for _, e := range strictErrs {
		problems = append(problems, e.Error())
	}
	SetDefaults(c)
	if len(problems) == 0 {
		return c, nil, nil
	}
	return c, &StrictDecodingError{Problems: problems}, nil
}

// Marshal returns c as a YAML KubeProxyConfiguration document (apiVersion and
// kind set), the format --write-config-to produces. c is not modified.
func Marshal(c *v1alpha1.KubeProxyConfiguration) ([]byte, error) {
	cp := c.DeepCopy()
	cp.APIVersion = APIVersion
	cp.Kind = Kind
	out, err := yaml.Marshal(cp)
	if err != nil {
		return nil, fmt.Errorf("encoding KubeProxyConfiguration: %w", err)
	}
	return out, nil
}

// ValidationError is a configuration that decoded but is not valid. It keeps
// the individual field errors for callers that want them (errors.As), and
// prints them on one line.
type ValidationError struct {
	// Errors holds every problem found, in field order.
	Errors field.ErrorList
}

// Error returns "invalid configuration: " and the field errors joined by "; ".
func (e *ValidationError) Error() string {
	return "invalid configuration: " + JoinFieldErrors(e.Errors)
}

// JoinFieldErrors renders field errors as one line joined by "; ", the form
// kproxy reports configuration problems in (one log line, one exit message).
func JoinFieldErrors(errs field.ErrorList) string {
	parts := make([]string, 0, len(errs))
	for _, e := range errs {
		parts = append(parts, oneLine(e.Error()))
	}
	return strings.Join(parts, "; ")
}

func looksLikeJSON(data []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("{"))
}

// oneLine collapses the multi-line messages some decoders produce (yaml.v2
// lists each problem on its own indented line).
// Only line breaks and the indentation after them are touched, so quoted
// values with several spaces stay intact.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	lines := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, " ")
}

// singleLine wraps an error whose message may span lines, keeping it
// reachable through errors.Is/As.
type singleLine struct{ err error }

func (e singleLine) Error() string { return oneLine(e.err.Error()) }
func (e singleLine) Unwrap() error { return e.err }

func checkTypeMeta(obj map[string]any) error {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	switch {
	case apiVersion != APIVersion:
		return fmt.Errorf("apiVersion: Unsupported value: %q: must be %q", apiVersion, APIVersion)
	case kind != Kind:
		return fmt.Errorf("kind: Unsupported value: %q: must be %q", kind, Kind)
	}
	return nil
}

// durationFields lists the metav1.Duration fields of the file format. They
// are checked before typed decoding because the typed decoder reports a bad
// duration string ("30x") without saying which field held it.
var durationFields = [][]string{
	{"iptables", "syncPeriod"},
	{"iptables", "minSyncPeriod"},
	{"ipvs", "syncPeriod"},
	{"ipvs", "minSyncPeriod"},
	{"ipvs", "tcpTimeout"},
	{"ipvs", "tcpFinTimeout"},
	{"ipvs", "udpTimeout"},
	{"nftables", "syncPeriod"},
	{"nftables", "minSyncPeriod"},
	{"conntrack", "tcpEstablishedTimeout"},
	{"conntrack", "tcpCloseWaitTimeout"},
	{"conntrack", "udpTimeout"},
	{"conntrack", "udpStreamTimeout"},
	{"configSyncPeriod"},
}

func checkDurations(obj map[string]any) field.ErrorList {
	var errs field.ErrorList
	for _, path := range durationFields {
		v, ok := lookup(obj, path)
		if !ok {
			continue
		}
		s, isString := v.(string)
		if !isString {
			continue // the typed decoder names the field for type mismatches
		}
		if _, err := time.ParseDuration(s); err != nil {
			fp := field.NewPath(path[0], path[1:]...)
			errs = append(errs, field.Invalid(fp, s, "must be a duration such as 30s, 1m or 2h45m"))
		}
	}
	return errs
}

func lookup(obj map[string]any, path []string) (any, bool) {
	var cur any = obj
	for _, key := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[key]; !ok {
			return nil, false
		}
	}
	return cur, true
}
