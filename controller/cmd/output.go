package cmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/s2strust/s2strust/internal/termsafe"
)

// Output formats of -o.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

// output is the -o flag of a read command: every read command registers
// it through addOutput, so the flag, its checking and its printing are
// the same everywhere. table is for people; json and yaml print the
// whole answer (no cell cut short) for scripts.
type output struct {
	format   string
	accepted []string
}

// addOutput registers -o/--output on c, accepting the formats given (the
// first is the default).
func addOutput(c *cobra.Command, accepted ...string) *output {
	o := &output{format: accepted[0], accepted: accepted}
	c.Flags().VarP(o, "output", "o", "output format: "+orList(accepted))
	return o
}

// String is the flag's value (pflag.Value).
func (o *output) String() string { return o.format }

// Type names the flag's value in help (pflag.Value).
func (o *output) Type() string { return "format" }

// Set refuses a format the command does not print, naming the accepted
// ones (pflag.Value).
func (o *output) Set(s string) error {
	if !slices.Contains(o.accepted, s) {
		return fmt.Errorf("-o %q: want %s", s, orList(o.accepted))
	}
	o.format = s
	return nil
}

// orList is "a, b or c".
func orList(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// machine reports whether the format is json or yaml.
func (o *output) machine() bool { return o.format == formatJSON || o.format == formatYAML }

// print writes v as JSON or YAML when -o asks for it, else calls table.
// v is a proto message (printed with protojson), or a value encoding/json
// marshals, whose proto parts are json.RawMessage from protoJSON.
func (o *output) print(w io.Writer, v any, table func() error) error {
	if !o.machine() {
		return table()
	}
	b, err := encodeJSON(v)
	if err != nil {
		return err
	}
	if o.format == formatYAML {
		if b, err = jsonToYAML(b); err != nil {
			return fmt.Errorf("print as yaml: %w", err)
		}
	} else {
		b = append(b, '\n')
	}
	// Strings came from agents and files. Inside JSON strings the escapes
	// termsafe writes (\u202e, \u001b) are JSON's own, so the data stays
	// the same; jsonToYAML left none to escape.
	_, err = io.WriteString(w, termsafe.Text(string(b)))
	return err
}

// jsonToYAML is the JSON document j as YAML, its keys in the same order.
// A string holding what a terminal would act on (a control or
// bidirectional character, a line break, a tab) is written double-quoted
// with YAML's escapes, which mean the same string: the YAML encoder would
// write it raw, and lose a tab or a carriage return.
func jsonToYAML(j []byte) ([]byte, error) {
	var v any
	if err := yaml.UnmarshalWithOptions(j, &v, yaml.UseOrderedMap()); err != nil {
		return nil, err
	}
	return yaml.Marshal(quoteUnsafe(v))
}

// yamlQuoted is a string written as a YAML double-quoted scalar; Go's
// escapes (\x1b, \t, \u202e …) are YAML's too.
type yamlQuoted string

// MarshalYAML implements yaml.BytesMarshaler.
func (q yamlQuoted) MarshalYAML() ([]byte, error) { return []byte(strconv.Quote(string(q))), nil }

// quoteUnsafe replaces, at any depth, each string termsafe would escape.
func quoteUnsafe(v any) any {
	switch x := v.(type) {
	case string:
		if termsafe.String(x) != x {
			return yamlQuoted(x)
		}
	case yaml.MapSlice:
		for i := range x {
			x[i].Value = quoteUnsafe(x[i].Value)
		}
	case []any:
		for i := range x {
			x[i] = quoteUnsafe(x[i])
		}
	}
	return v
}

// jsonOptions give every field, set or not, under its proto3 JSON name
// (lowerCamelCase, as grpcurl shows it), so scripts can rely on a field
// being there.
var jsonOptions = protojson.MarshalOptions{EmitUnpopulated: true}

// protoJSON is m in protojson, for embedding in a JSON document.
func protoJSON(m proto.Message) json.RawMessage {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		// Only invalid UTF-8 in a string fails; the wire decoder refused
		// that already.
		b, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	return b
}

// encodeJSON is v as indented JSON with a stable layout: protojson
// deliberately varies its whitespace from build to build, so its output is
// re-indented here.
func encodeJSON(v any) ([]byte, error) {
	var raw []byte
	if m, ok := v.(proto.Message); ok {
		raw = protoJSON(m)
	} else {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			return nil, fmt.Errorf("print as json: %w", err)
		}
		raw = buf.Bytes()
	}
	var out bytes.Buffer
	if err := json.Indent(&out, bytes.TrimSpace(raw), "", "  "); err != nil {
		return nil, fmt.Errorf("print as json: %w", err)
	}
	return out.Bytes(), nil
}

// maxCell is the widest a free-text table cell is shown, in characters;
// longer text is cut with "…" and shown whole by -o json. The escaped
// hostile test text (62 characters) fits.
const maxCell = 72

// table is a tabwriter table whose cells are escaped for the terminal and
// whose free-text columns (limit) are cut at maxCell, with a note under
// the table when any was.
type table struct {
	w     io.Writer
	tw    *tabwriter.Writer
	limit []bool
	cut   bool
}

// newTable starts a table with its header; a header ending in "~" names
// a free-text column (the "~" is not printed).
func newTable(w io.Writer, header ...string) *table {
	t := &table{w: w, tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), limit: make([]bool, len(header))}
	names := make([]string, len(header))
	for i, h := range header {
		names[i], t.limit[i] = strings.CutSuffix(h, "~")
	}
	fmt.Fprintln(t.tw, strings.Join(names, "\t"))
	return t
}

// row adds a row; every cell is escaped.
func (t *table) row(cells ...string) {
	for i, c := range cells {
		c = safe(c)
		if i < len(t.limit) && t.limit[i] {
			var cut bool
			c, cut = truncate(c, maxCell)
			t.cut = t.cut || cut
		}
		cells[i] = c
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

// flush prints the table and, when a cell was cut, where the whole text is.
func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	if t.cut {
		_, err := fmt.Fprintf(t.w, "\n(text longer than %d characters is cut at …; -o json shows it whole)\n", maxCell)
		return err
	}
	return nil
}

// truncate cuts s to n characters, the last one "…", and reports whether
// it did. It cuts between characters, never inside one.
func truncate(s string, n int) (string, bool) {
	if utf8.RuneCountInString(s) <= n {
		return s, false
	}
	i, count := 0, 0
	for j := range s {
		if count == n-1 {
			i = j
			break
		}
		count++
	}
	return s[:i] + "…", true
}
