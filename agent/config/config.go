// Package config reads the agent's configuration file, agent.yaml, and
// merges it with the command line in one place: flags the operator typed
// win, then the file, then the flags' defaults. The file's keys are the
// flags' names (e.g. state-dir, drift-interval) so that one name means one
// setting everywhere, and its values go through the flags' own parsing, so
// a duration or a boolean is read the same way from either source. The file
// is strict: an unknown key, a duplicate key, a nested value, or a value
// the flag does not accept is refused with the file, the key and the value.
package config

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/spf13/pflag"
)

// MaxSize bounds the file; a configuration of a few dozen keys is small.
const MaxSize = 64 << 10

// notInFile are flags that make no sense in the file.
var notInFile = map[string]bool{"config": true, "help": true}

// ApplyFile reads the YAML file at path and sets every flag of fs that it
// names and that was not given on the command line. Keys and value shapes
// are all checked before any flag is set; a value a flag then refuses
// stops at that key, and the caller must not start (the agent exits).
func ApplyFile(fs *pflag.FlagSet, path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("configuration file: %w", err)
	}
	if info.Size() > MaxSize {
		return fmt.Errorf("configuration file %s: %d bytes, over the %d-byte limit", path, info.Size(), MaxSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("configuration file: %w", err)
	}
	return Apply(fs, path, data)
}

// Apply is ApplyFile on the file's content; name names it in errors.
func Apply(fs *pflag.FlagSet, name string, data []byte) error {
	// Duplicate keys are refused by default (AllowDuplicateMapKey is opt-in).
	var doc map[string]any
	if err := yaml.UnmarshalWithOptions(data, &doc); err != nil {
		return fmt.Errorf("configuration file %s: %w", name, err)
	}
	type setting struct {
		flag   *pflag.Flag
		values []string
	}
	var settings []setting
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || notInFile[k] {
			return fmt.Errorf("configuration file %s: unknown key %q (known keys: %s)", name, k, strings.Join(known(fs), ", "))
		}
		values, err := scalars(doc[k], isList(f))
		if err != nil {
			return fmt.Errorf("configuration file %s: key %s: %w", name, k, err)
		}
		if !f.Changed {
			settings = append(settings, setting{f, values})
		}
	}
	for _, s := range settings {
		for _, v := range s.values {
			if err := fs.Set(s.flag.Name, v); err != nil {
				return fmt.Errorf("configuration file %s: key %s: value %q: %w", name, s.flag.Name, v, err)
			}
		}
	}
	return nil
}

// isList reports whether the flag takes repeated values (a slice flag).
func isList(f *pflag.Flag) bool {
	t := f.Value.Type()
	return strings.HasSuffix(t, "Slice") || strings.HasSuffix(t, "Array")
}

// scalars turns a YAML value into the strings the flag parses.
func scalars(v any, list bool) ([]string, error) {
	switch x := v.(type) {
	case nil:
		return nil, errors.New("no value")
	case []any:
		if !list {
			return nil, errors.New("a list, but this setting takes one value")
		}
		out := make([]string, 0, len(x))
		for _, e := range x {
			s, err := scalars(e, false)
			if err != nil {
				return nil, fmt.Errorf("list entry: %w", err)
			}
			out = append(out, s...)
		}
		return out, nil
	case map[string]any:
		return nil, errors.New("a mapping, but this setting takes a value")
	case string:
		return []string{x}, nil
	case bool, int, int64, uint64, float64:
		return []string{fmt.Sprint(x)}, nil
	}
	return nil, fmt.Errorf("unsupported value %v (%T)", v, v)
}

func known(fs *pflag.FlagSet) []string {
	var out []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !notInFile[f.Name] {
			out = append(out, f.Name)
		}
	})
	sort.Strings(out)
	return out
}
