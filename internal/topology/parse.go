package topology

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/lexer"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// Limits checked on the token stream before parsing. The YAML parser's cost
// grows with the square of the nesting depth and of the number of keys in a
// block mapping, so a 1 MiB document of "[[[[…" or of "k1: v", "k2: v", …
// would otherwise take minutes to hours. A topology nests four levels deep
// and its largest mapping has eleven fields.
const (
	maxFlowDepth        = 32
	maxIndicatorsOnLine = 16
	maxBlockKeys        = 100
)

// Parse reads a topology document: YAML, or JSON (which is YAML). It checks
// the document's shape (one document, a mapping, no unknown or misspelled
// fields, each value of the right kind) and reports every problem at once as
// an *Error naming the file, line and column. It does not check the values;
// Validate does. Documents over MaxDocumentSize, empty documents and files
// holding several documents are errors, as are anchors, aliases and tags,
// which a topology never needs.
func Parse(filename string, data []byte) (*Topology, error) {
	fail := func(vs ...FieldViolation) (*Topology, error) {
		return nil, newError(filename, vs)
	}
	if len(data) > MaxDocumentSize {
		return fail(FieldViolation{Description: fmt.Sprintf("document is %d bytes; the limit is %d bytes (1 MiB)", len(data), MaxDocumentSize)})
	}
	// Windows editors like to start files with a byte order mark.
	data = bytes.TrimPrefix(data, []byte("\uFEFF"))
	if !utf8.Valid(data) {
		return fail(notUTF8(data))
	}
	body, v := parseBody(data)
	if v != nil {
		return fail(*v)
	}
	w := walker{pos: map[string]position{}}
	w.walk("", body, reflect.TypeFor[Topology]())
	if len(w.vs) > 0 {
		return fail(w.vs...)
	}
	t := &Topology{file: filename, pos: w.pos}
	if err := guard(func() error { return yaml.NodeToValue(body, t, yaml.DisallowUnknownField()) }); err != nil {
		// The walk above admits only what decodes; this is a backstop.
		return fail(yamlViolation("decode", err))
	}
	return t, nil
}

// parseBody parses data into the single document body it must hold.
func parseBody(data []byte) (ast.Node, *FieldViolation) {
	var tokens token.Tokens
	if err := guard(func() error { tokens = lexer.Tokenize(string(data)); return nil }); err != nil {
		v := yamlViolation("invalid YAML", err)
		return nil, &v
	}
	if tk := tokens.InvalidToken(); tk != nil {
		return nil, violationAt(tk, "invalid YAML: %s", tk.Error)
	}
	if v := checkTokens(tokens); v != nil {
		return nil, v
	}
	var f *ast.File
	err := guard(func() (err error) {
		f, err = parser.Parse(tokens, 0)
		return err
	})
	if err != nil {
		v := yamlViolation("invalid YAML", err)
		return nil, &v
	}
	var bodies []ast.Node
	for _, d := range f.Docs {
		if d == nil || d.Body == nil {
			continue
		}
		switch d.Body.Type() {
		case ast.CommentType, ast.CommentGroupType:
			continue
		}
		bodies = append(bodies, d.Body)
	}
	switch {
	case len(bodies) == 0:
		return nil, &FieldViolation{Description: "document is empty; expected a TrustTopology (apiVersion: " + APIVersion + ", kind: " + Kind + ", name, sipDomains, deployments, trusts)"}
	case len(bodies) > 1:
		p := nodePos(bodies[1])
		return nil, &FieldViolation{Description: fmt.Sprintf("found %d YAML documents; a topology file holds exactly one", len(bodies)), Line: p.line, Column: p.column}
	}
	if bodies[0].Type() == ast.NullType {
		return nil, &FieldViolation{Description: "document is empty (null); expected a TrustTopology mapping"}
	}
	return bodies[0], nil
}

// checkTokens rejects documents nested deeper, or with larger block
// mappings, than any topology, before the parser spends quadratic time on
// them.
func checkTokens(tokens token.Tokens) *FieldViolation {
	// runs counts the keys of the block mappings open at each column.
	type run struct{ column, keys int }
	var runs []run
	closeRuns := func(column int) {
		for len(runs) > 0 && runs[len(runs)-1].column > column {
			runs = runs[:len(runs)-1]
		}
	}
	depth, line, onLine := 0, -1, 0
	for i, tk := range tokens {
		switch tk.Type {
		case token.SequenceStartType, token.MappingStartType:
			depth++
			if depth > maxFlowDepth {
				return violationAt(tk, "document nests [ ] and { } more than %d levels deep", maxFlowDepth)
			}
		case token.SequenceEndType, token.MappingEndType:
			if depth > 0 {
				depth--
			}
		case token.SequenceEntryType, token.MappingKeyType:
			p := tokenPos(tk)
			if p.line != line {
				line, onLine = p.line, 0
			}
			onLine++
			if onLine > maxIndicatorsOnLine {
				return violationAt(tk, "line nests more than %d block entries (- or ?)", maxIndicatorsOnLine)
			}
			if depth == 0 {
				closeRuns(p.column)
			}
		case token.MappingValueType:
			if depth > 0 || i == 0 {
				continue
			}
			key := tokens[i-1]
			column := tokenPos(key).column
			closeRuns(column)
			if n := len(runs); n > 0 && runs[n-1].column == column {
				runs[n-1].keys++
				if runs[n-1].keys > maxBlockKeys {
					return violationAt(key, "mapping has more than %d keys", maxBlockKeys)
				}
			} else {
				runs = append(runs, run{column, 1})
			}
		}
	}
	return nil
}

// guard runs a YAML library call and turns a panic into an error: Parse
// takes untrusted input and must never take the process down.
func guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the YAML library failed on this document: %v", r)
		}
	}()
	return f()
}

// yamlViolation turns a YAML library error into a violation at its token.
func yamlViolation(what string, err error) FieldViolation {
	var ye yaml.Error
	if errors.As(err, &ye) {
		p := tokenPos(ye.GetToken())
		return FieldViolation{Description: what + ": " + ye.GetMessage(), Line: p.line, Column: p.column}
	}
	return FieldViolation{Description: what + ": " + err.Error()}
}

// notUTF8 locates the first byte that is not UTF-8.
func notUTF8(data []byte) FieldViolation {
	line, col := 1, 1
	for len(data) > 0 {
		r, size := utf8.DecodeRune(data)
		if r == utf8.RuneError && size <= 1 {
			break
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		data = data[size:]
	}
	return FieldViolation{Description: "document is not UTF-8 text (save it as UTF-8)", Line: line, Column: col}
}

// walker checks a document's shape against the Go types it decodes into,
// collecting every violation, and records where each field's value is.
type walker struct {
	pos map[string]position
	vs  []FieldViolation
}

func (w *walker) violation(p position, field, value, desc string) {
	w.vs = append(w.vs, FieldViolation{Field: field, Value: value, Description: desc, Line: p.line, Column: p.column})
}

func (w *walker) walk(path string, n ast.Node, t reflect.Type) {
	if n == nil {
		return
	}
	p := nodePos(n)
	w.pos[path] = p
	switch n.Type() {
	case ast.AnchorType, ast.AliasType:
		w.violation(p, path, "", "YAML anchors and aliases are not supported in a topology; write the value out")
		return
	case ast.TagType:
		w.violation(p, path, "", "YAML tags are not supported in a topology; write a plain or quoted value")
		return
	case ast.NullType:
		return // the same as leaving the field out
	}
	switch t.Kind() {
	case reflect.Pointer:
		w.walk(path, n, t.Elem())
	case reflect.Struct:
		w.walkStruct(path, n, t)
	case reflect.Slice:
		seq, ok := n.(*ast.SequenceNode)
		if !ok {
			w.violation(p, path, scalarText(n), "expected a list, found "+describe(n))
			return
		}
		for i, e := range seq.Values {
			w.walk(fmt.Sprintf("%s[%d]", path, i), e, t.Elem())
		}
	case reflect.String:
		if !isStringNode(n) {
			desc := "expected a string, found " + describe(n)
			if s := scalarText(n); s != "" {
				desc += fmt.Sprintf("; write it in quotes (%q) if it is meant as text", s)
			}
			w.violation(p, path, scalarText(n), desc)
		}
	case reflect.Bool:
		if n.Type() != ast.BoolType {
			w.violation(p, path, scalarText(n), "expected true or false, found "+describe(n))
		}
	case reflect.Int:
		if n.Type() != ast.IntegerType {
			w.violation(p, path, scalarText(n), "expected a whole number, found "+describe(n))
		}
	default:
		// A field of a kind added to the types without a check here; the
		// tests load documents with every field and would fail.
		w.violation(p, path, "", fmt.Sprintf("internal error: no check for a %v", t))
	}
}

func (w *walker) walkStruct(path string, n ast.Node, t reflect.Type) {
	m, ok := n.(ast.MapNode) // a *ast.MappingNode or *ast.MappingValueNode
	if !ok {
		w.violation(nodePos(n), path, scalarText(n), "expected a mapping of "+strings.Join(fieldNames(t), ", ")+", found "+describe(n))
		return
	}
	it := m.MapRange()
	for it.Next() {
		kv := it.KeyValue()
		kp := nodePos(kv.Key)
		name, ok := keyName(kv.Key)
		if !ok {
			w.violation(kp, path, "", describe(kv.Key)+" is not supported here; keys are plain field names")
			continue
		}
		child := name
		if path != "" {
			child = path + "." + name
		}
		f, ok := fieldByName(t, name)
		if !ok {
			w.violation(kp, child, "", unknownField(t, name))
			continue
		}
		w.walk(child, kv.Value, f.Type)
	}
}

// unknownField says a field is unknown and what would be accepted.
func unknownField(t reflect.Type, name string) string {
	names := fieldNames(t)
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return fmt.Sprintf("unknown field %q; did you mean %q? (field names are case-sensitive)", name, n)
		}
	}
	return fmt.Sprintf("unknown field %q; accepted: %s", name, strings.Join(names, ", "))
}

// fieldNames lists the document field names of struct type t, in order.
func fieldNames(t reflect.Type) []string {
	var names []string
	for f := range t.Fields() {
		if n := jsonName(f); n != "" {
			names = append(names, n)
		}
	}
	return names
}

func fieldByName(t reflect.Type, name string) (reflect.StructField, bool) {
	for f := range t.Fields() {
		if jsonName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func jsonName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "-" {
		return ""
	}
	return name
}

func keyName(k ast.MapKeyNode) (string, bool) {
	switch k := k.(type) {
	case *ast.StringNode:
		return k.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.NullNode, *ast.InfinityNode, *ast.NanNode:
		return k.GetToken().Value, true
	}
	return "", false
}

// isStringNode reports whether n decodes into a string as written: a string,
// or an integer written as plain decimal digits, so that version: 2019 needs
// no quotes while 0x1F, 1e5 or true (which would change on the way) do.
func isStringNode(n ast.Node) bool {
	switch n := n.(type) {
	case *ast.StringNode, *ast.LiteralNode:
		return true
	case *ast.IntegerNode:
		s := n.GetToken().Value
		if n.GetToken().Type != token.IntegerType || s == "" || (len(s) > 1 && s[0] == '0') {
			return false
		}
		for _, c := range s {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	return false
}

// scalarText is a scalar node's text, or "" for other nodes.
func scalarText(n ast.Node) string {
	switch n.Type() {
	case ast.StringType, ast.IntegerType, ast.FloatType, ast.BoolType, ast.InfinityType, ast.NanType:
		if tk := n.GetToken(); tk != nil {
			return tk.Value
		}
	}
	return ""
}

// describe names a node's kind for error messages.
func describe(n ast.Node) string {
	switch n.Type() {
	case ast.MappingType, ast.MappingValueType:
		return "a mapping"
	case ast.SequenceType:
		return "a list"
	case ast.StringType, ast.LiteralType:
		return "a string"
	case ast.IntegerType, ast.FloatType, ast.InfinityType, ast.NanType:
		return "a number"
	case ast.BoolType:
		return "a boolean"
	case ast.NullType:
		return "null"
	case ast.MappingKeyType:
		return "a complex key (?)"
	case ast.MergeKeyType:
		return "a merge key (<<)"
	case ast.AnchorType:
		return "an anchor"
	case ast.AliasType:
		return "an alias"
	case ast.TagType:
		return "a tagged value"
	}
	return "a " + strings.ToLower(n.Type().String())
}

// nodePos is where a node starts: a block mapping at its first key.
func nodePos(n ast.Node) position {
	switch m := n.(type) {
	case *ast.MappingNode:
		if !m.IsFlowStyle && len(m.Values) > 0 && m.Values[0].Key != nil {
			return nodePos(m.Values[0].Key)
		}
	case *ast.MappingValueNode:
		if m.Key != nil {
			return nodePos(m.Key)
		}
	}
	return tokenPos(n.GetToken())
}

// tokenPos is where a token starts; zero when the library does not say.
func tokenPos(tk *token.Token) position {
	if tk == nil || tk.Position == nil {
		return position{}
	}
	return position{tk.Position.Line, tk.Position.Column}
}

// violationAt is a document-level violation at a token.
func violationAt(tk *token.Token, format string, args ...any) *FieldViolation {
	p := tokenPos(tk)
	return &FieldViolation{Description: fmt.Sprintf(format, args...), Line: p.line, Column: p.column}
}

// Position is where field (a path such as "deployments[1].version") is in
// the document t was parsed from, or, when the field is absent, where its
// closest enclosing field is: 1-based line and column, zero when unknown.
// Checks made outside this package use it to point their violations at
// the document.
func (t *Topology) Position(field string) (line, column int) {
	p := t.at(field)
	return p.line, p.column
}

// at finds where field (or, failing that, its closest enclosing field) is.
func (t *Topology) at(field string) position {
	if t == nil {
		return position{}
	}
	for {
		if p, ok := t.pos[field]; ok {
			return p
		}
		if field == "" {
			return position{}
		}
		field = parentField(field)
	}
}

// parentField strips the last element of a field path: "a[1].b" → "a[1]" → "a" → "".
func parentField(field string) string {
	i := strings.LastIndexAny(field, ".[")
	if i < 0 {
		return ""
	}
	return field[:i]
}

// sortViolations orders violations by position, those without one first,
// keeping the order found among equals.
func sortViolations(vs []FieldViolation) {
	sort.SliceStable(vs, func(i, j int) bool {
		if vs[i].Line != vs[j].Line {
			return vs[i].Line < vs[j].Line
		}
		return vs[i].Column < vs[j].Column
	})
}
