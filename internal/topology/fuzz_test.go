package topology

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds Parse arbitrary documents. It must never panic, must
// report failures as *Error, and every document it accepts and Validate
// passes must compile, and survive Canonical → Load (and YAML → Load) with
// identical canonical bytes.
func FuzzParse(f *testing.F) {
	shortenMinimization(f)
	files, err := filepath.Glob("testdata/*")
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(oneDeployment))
	f.Add([]byte(header + "deployments: [{name: a, product: sharepoint, version: SE, webAppUrl: 'https://sp.contoso.com/x', hosts: [A.contoso.com]}]\ntrusts: []\n"))
	f.Add([]byte("{}"))
	f.Add([]byte("- [a, {b: c}]\n"))
	f.Add([]byte(header + "realm: &r x\nname: *r\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		top, err := Parse("fuzz.yaml", data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || len(e.Violations) == 0 || e.File != "fuzz.yaml" {
				t.Fatalf("Parse error %v (%T) is not an *Error with violations", err, err)
			}
			return
		}
		if err := Validate(top); err != nil {
			var e *Error
			if !errors.As(err, &e) || len(e.Violations) == 0 {
				t.Fatalf("Validate error %v (%T) is not an *Error with violations", err, err)
			}
			return
		}
		canonical, err := top.Canonical()
		if err != nil {
			t.Fatalf("Canonical of a valid topology: %v", err)
		}
		again, err := Load("canonical.json", canonical)
		if err != nil {
			t.Fatalf("Load of the canonical form: %v\n%s", err, canonical)
		}
		if c2, err := again.Canonical(); err != nil || !bytes.Equal(c2, canonical) {
			t.Fatalf("canonical form changed on reload (%v):\n%s\nwant:\n%s", err, c2, canonical)
		}
		y, err := top.YAML()
		if err != nil {
			t.Fatalf("YAML of a valid topology: %v", err)
		}
		fromYAML, err := Load("canonical.yaml", y)
		if err != nil {
			t.Fatalf("Load of the YAML form: %v\n%s", err, y)
		}
		if c3, err := fromYAML.Canonical(); err != nil || !bytes.Equal(c3, canonical) {
			t.Fatalf("YAML form loads differently (%v):\n%s\nwant:\n%s", err, c3, canonical)
		}
		cfgs, err := Compile(top)
		if err != nil {
			t.Fatalf("Compile of a valid topology: %v", err)
		}
		for _, c := range cfgs {
			if Hash(c) == "" {
				t.Fatalf("configuration of %s cannot be hashed", c.Host)
			}
		}
		Plan(nil, cfgs)
	})
}

// shortenMinimization makes `go test -fuzz FuzzParse` fuzz rather than
// minimize. Go minimizes every new interesting input for up to
// -test.fuzzminimizetime (60 s by default), trying every subset of its
// bytes: on kilobyte topologies that takes the full minute each time, so a
// 20-second run made a dozen executions. Unless the flag is given, minimize
// for a moment only.
func shortenMinimization(f *testing.F) {
	const name = "test.fuzzminimizetime"
	set := false
	flag.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
	if set || flag.Lookup(name) == nil {
		return
	}
	if err := flag.Set(name, "2s"); err != nil {
		f.Fatal(err)
	}
}
