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

// StrictDecodingError reports unknown and duplicate fields found while
// decoding a config file. Upstream only logs these and retries leniently;
// kproxy refuses the file, because a misspelt field silently falling back to
// its default is much harder to debug than a startup error.
type StrictDecodingError struct {
	// Problems holds one entry per offending field, e.g.
	// `unknown field "iptables.masqueradeBits"`.
	Problems []string
}

// Error joins the problems into one line.
func (e *StrictDecodingError) Error() string {
	return "strict decoding failed: " + strings.Join(e.Problems, ", ")
}

// LoadFile reads the KubeProxyConfiguration file at path, decodes it strictly
// (see Decode) and applies SetDefaults. Errors name the path.
func LoadFile(path string) (*v1alpha1.KubeProxyConfiguration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		// The *PathError already says which file and why.
		return nil, fmt.Errorf("reading config file: %w", err)
	}
	c, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return c, nil
}

// Decode decodes a YAML or JSON KubeProxyConfiguration and applies
// SetDefaults. It requires apiVersion kubeproxy.config.k8s.io/v1alpha1 and
// kind KubeProxyConfiguration and matches field names case-sensitively.
// Unknown fields (and duplicate fields in JSON) are reported as a
// *StrictDecodingError; duplicate keys in YAML are already refused by the YAML
// parser, whose error names the key and line. Returned errors are one line.
func Decode(data []byte) (*v1alpha1.KubeProxyConfiguration, error) {
	jsonData := data
	if !looksLikeJSON(data) {
		var err error
		// YAMLToJSONStrict rejects duplicate keys, which a plain YAML to
		// JSON conversion would silently collapse to the last one.
		jsonData, err = yaml.YAMLToJSONStrict(data)
		if err != nil {
			return nil, fmt.Errorf("invalid YAML: %w", singleLine{err})
		}
	}

	var generic map[string]any
	if err := json.Unmarshal(jsonData, &generic); err != nil || generic == nil {
		return nil, errors.New("must be a YAML or JSON object with apiVersion and kind")
	}
	if err := checkTypeMeta(generic); err != nil {
		return nil, err
	}
	if errs := checkDurations(generic); len(errs) > 0 {
		return nil, errors.New(JoinFieldErrors(errs))
	}

	c := &v1alpha1.KubeProxyConfiguration{}
	strictErrs, err := kjson.UnmarshalStrict(jsonData, c)
	if err != nil {
		return nil, fmt.Errorf("decoding: %w", singleLine{err})
	}
	if len(strictErrs) > 0 {
		se := &StrictDecodingError{}
		for _, e := range strictErrs {
			se.Problems = append(se.Problems, e.Error())
		}
		return nil, se
	}
	SetDefaults(c)
	return c, nil
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
