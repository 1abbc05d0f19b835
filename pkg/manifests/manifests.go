// Package manifests reads Service, EndpointSlice and Node objects from YAML or JSON files,
// so rules can be rendered without a cluster (`kproxy render`).
package manifests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// Objects are the objects found, in file order.
type Objects struct {
	Services       []*v1.Service
	EndpointSlices []*discovery.EndpointSlice
	Nodes          []*v1.Node
	// Skipped counts documents of other kinds, which are ignored.
	Skipped int
}

// Load reads every path: a file, or a directory whose *.yaml, *.yml and *.json files are
// read in name order. Files may hold several documents and v1 Lists.
func Load(paths ...string) (*Objects, error) {
	objs := &Objects{}
	for _, p := range paths {
		files, err := expand(p)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("reading manifests: %w", err)
			}
			if err := objs.decode(data); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
		}
	}
	return objs, nil
}

func expand(p string) ([]string, error) {
	info, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("reading manifests: %w", err)
	}
	if !info.IsDir() {
		return []string{p}, nil
	}
	entries, err := os.ReadDir(p)
	if err != nil {
		return nil, fmt.Errorf("reading manifests: %w", err)
	}
	var files []string
	for _, e := range entries {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".yaml", ".yml", ".json":
			if !e.IsDir() {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
	}
	sort.Strings(files)
	return files, nil
}

func (o *Objects) decode(data []byte) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	deserializer := scheme.Codecs.UniversalDeserializer()
	for doc := 1; ; doc++ {
		var raw runtime.RawExtension
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("document %d: %w", doc, err)
		}
		if len(bytes.TrimSpace(raw.Raw)) == 0 || string(bytes.TrimSpace(raw.Raw)) == "null" {
			continue
		}
		obj, _, err := deserializer.Decode(raw.Raw, nil, nil)
		if err != nil {
			if runtime.IsNotRegisteredError(err) {
				o.Skipped++
				continue
			}
			return fmt.Errorf("document %d: %w", doc, err)
		}
		if err := o.add(obj); err != nil {
			return fmt.Errorf("document %d: %w", doc, err)
		}
	}
}

func (o *Objects) add(obj runtime.Object) error {
	switch t := obj.(type) {
	case *v1.Service:
		o.Services = append(o.Services, t)
	case *discovery.EndpointSlice:
		o.EndpointSlices = append(o.EndpointSlices, t)
	case *v1.Node:
		o.Nodes = append(o.Nodes, t)
	case *v1.List:
		for i, item := range t.Items {
			inner, _, err := scheme.Codecs.UniversalDeserializer().Decode(item.Raw, nil, nil)
			if err != nil {
				if runtime.IsNotRegisteredError(err) {
					o.Skipped++
					continue
				}
				return fmt.Errorf("list item %d: %w", i, err)
			}
			if err := o.add(inner); err != nil {
				return err
			}
		}
	default:
		o.Skipped++
	}
	return nil
}
