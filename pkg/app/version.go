package app

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/version"
)

// versionMode is the value of --version.
type versionMode string

// The values of --version, as component-base's verflag names them.
const (
	versionOff versionMode = "false"
	versionOn  versionMode = "true"
	versionRaw versionMode = "raw"
)

// addVersionFlag registers --version on fs, with upstream's syntax: --version
// or --version=true prints the version, --version=raw the whole build
// information. component-base's verflag is not used: it registers on the
// process-wide pflag.CommandLine and exits the process itself, which would skip
// Main's log flush and exit code.
func addVersionFlag(fs *pflag.FlagSet, mode *versionMode) {
	fs.Var(mode, "version", "--version, --version=raw prints version information and quits")
	fs.Lookup("version").NoOptDefVal = string(versionOn)
}

func (m *versionMode) String() string { return string(*m) }

func (m *versionMode) Type() string { return "version" }

func (m *versionMode) Set(s string) error {
	if s == string(versionRaw) {
		*m = versionRaw
		return nil
	}
	on, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("must be true, false or raw")
	}
	*m = versionOff
	if on {
		*m = versionOn
	}
	return nil
}

// printVersion writes what upstream's --version writes, with kproxy's name in
// place of "Kubernetes": "kproxy v1.37.2", or with raw the whole info as a Go
// value.
func printVersion(w io.Writer, mode versionMode, info version.Info) error {
	var err error
	if mode == versionRaw {
		_, err = fmt.Fprintf(w, "%#v\n", info)
	} else {
		_, err = fmt.Fprintf(w, "kproxy %s\n", info)
	}
	if err != nil {
		return fmt.Errorf("printing the version: %w", err)
	}
	return nil
}
