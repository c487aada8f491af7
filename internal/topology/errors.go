package topology

import (
	"fmt"
	"strconv"
	"strings"
)

// FieldViolation is one problem with a topology document.
type FieldViolation struct {
	// Field is the path of the offending field, e.g. "deployments[1].version"
	// or "trusts[2].to"; empty for the document as a whole.
	Field string
	// Value is the offending value as written (after normalization where
	// Validate normalizes it); empty when the field is missing or the value
	// is not a scalar.
	Value string
	// Description says what is wrong and what would be accepted. It does not
	// repeat Field or Value; Message and String combine them.
	Description string
	// Line and Column locate the field in the document (1-based), when known.
	Line, Column int
}

// Message is the violation without its field path: the quoted value, if
// any, then the description. It suits google.rpc.BadRequest's description.
func (v FieldViolation) Message() string {
	if v.Value == "" {
		return v.Description
	}
	return strconv.Quote(v.Value) + ": " + v.Description
}

// String is the violation as one line: `field: "value": description`.
func (v FieldViolation) String() string {
	if v.Field == "" {
		return v.Message()
	}
	return v.Field + ": " + v.Message()
}

// MaxViolations bounds the violations an Error lists, so that a document
// wrong in ten thousand places gives a readable message and a response of
// bounded size; a last violation then counts those left out.
const MaxViolations = 100

// Error is an invalid topology document: every violation found in it, up
// to MaxViolations.
type Error struct {
	// File is the document's name as given to Parse or Load.
	File string
	// Violations are the problems found, in document order where known.
	Violations []FieldViolation
}

// newError returns the Error for violations vs of file.
func newError(file string, vs []FieldViolation) *Error {
	if n := len(vs) - MaxViolations; n > 0 {
		vs = append(vs[:MaxViolations:MaxViolations], FieldViolation{Description: fmt.Sprintf("and %d more violations", n)})
	}
	return &Error{File: file, Violations: vs}
}

// Error lists every violation on its own line, each prefixed with the file
// name and, when known, line:column, e.g.
// `contoso.yaml:12:5: deployments[0].foo: unknown field "foo" (...)`.
func (e *Error) Error() string {
	if len(e.Violations) == 0 {
		return e.prefix(FieldViolation{}) + "invalid topology"
	}
	var b strings.Builder
	for i, v := range e.Violations {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.prefix(v))
		b.WriteString(v.String())
	}
	return b.String()
}

func (e *Error) prefix(v FieldViolation) string {
	p := e.File
	if v.Line > 0 {
		p += ":" + strconv.Itoa(v.Line) + ":" + strconv.Itoa(v.Column)
	}
	if p == "" {
		return ""
	}
	return p + ": "
}

// position is a place in a document, 1-based.
type position struct{ line, column int }
