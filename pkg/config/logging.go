package config

import (
	"fmt"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"

	// Registered here, where logging settings are validated, so that every user of
	// this package (the daemon, `kproxy render`, tests) accepts the formats upstream
	// kube-proxy accepts: "text" and "json".
	_ "k8s.io/component-base/logs/json/register"
)

// LoggingFeatureGate returns a feature gate holding component-base's logging
// gates (LoggingAlphaOptions, LoggingBetaOptions, ContextualLogging) at their
// upstream defaults, overridden by the ones gates sets. component-base checks
// logging options against it (--log-text-split-stream needs
// LoggingAlphaOptions), as upstream checks them against its feature gates.
// Other names in gates are left out: kproxy accepts any gate name.
func LoggingFeatureGate(gates map[string]bool) (featuregate.FeatureGate, error) {
	fg := featuregate.NewFeatureGate()
	if err := logsapi.AddFeatureGates(fg); err != nil {
		return nil, fmt.Errorf("registering the logging feature gates: %w", err)
	}
	known := fg.GetAll()
	set := map[string]bool{}
	for name, on := range gates {
		if _, ok := known[featuregate.Feature(name)]; ok {
			set[name] = on
		}
	}
	// Discarded: this package does not log; the caller reports gates it cannot honour.
	if err := fg.SetFromMapWithLogger(logr.Discard(), set); err != nil {
		return nil, fmt.Errorf("setting the logging feature gates: %w", err)
	}
	return fg, nil
}

// convertLogging copies the logging section and validates it with
// component-base's own rules, the ones upstream applies.
func convertLogging(in *v1alpha1.KubeProxyConfiguration, fldPath *field.Path) (logsapi.LoggingConfiguration, field.ErrorList) {
	out := *in.Logging.DeepCopy()
	fg, err := LoggingFeatureGate(in.FeatureGates)
	if err != nil {
		return out, field.ErrorList{field.Invalid(field.NewPath("featureGates"), in.FeatureGates, err.Error())}
	}
	return out, logsapi.Validate(&out, fg, fldPath)
}
