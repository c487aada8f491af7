// Package pagetoken makes and reads the opaque page tokens of the
// controller's List RPCs (AIP-158): the base64 of the list's kind, the
// cursor (the last key of the page, with the filter it was issued for)
// and a checksum over both, so that a token cut, edited or issued by
// another List is refused naming page_token instead of listing from
// somewhere else.
package pagetoken

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"

	"github.com/s2strust/s2strust/internal/topology"
)

// version is the first byte of every token, for a later format.
const version = 1

// sumLen is how many bytes of the SHA-256 checksum a token carries.
const sumLen = 8

// Encode returns the token that continues the list kind after cursor.
func Encode(kind, cursor string) string {
	b := make([]byte, 0, 2+len(kind)+len(cursor)+sumLen)
	b = append(b, version)
	b = append(b, kind...)
	b = append(b, 0)
	b = append(b, cursor...)
	sum := sha256.Sum256(b)
	b = append(b, sum[:sumLen]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode returns the cursor of a token Encode made for kind, or an
// INVALID_ARGUMENT error naming page_token.
func Decode(kind, token string) (string, error) {
	bad := func(why string) error {
		return Invalid("page_token", token, why+"; pass the next_page_token of a previous "+kind+" response, or none for the first page")
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(token)
	// The decoder skips line breaks: a token is only the one encoding.
	if err != nil || base64.RawURLEncoding.EncodeToString(b) != token {
		return "", bad("not a page token (not base64url)")
	}
	if len(b) < 2+sumLen || b[0] != version {
		return "", bad("not a page token")
	}
	body, sum := b[:len(b)-sumLen], b[len(b)-sumLen:]
	want := sha256.Sum256(body)
	if !bytes.Equal(sum, want[:sumLen]) {
		return "", bad("a damaged page token (checksum mismatch)")
	}
	k, cursor, ok := bytes.Cut(body[1:], []byte{0})
	if !ok || string(k) != kind {
		return "", bad("a page token of another list (" + strconv.Quote(string(k)) + ")")
	}
	return string(cursor), nil
}

// Size is the page size to use for a request's page_size: def for 0, at
// most max, and an INVALID_ARGUMENT error naming page_size when negative.
func Size(n int32, def, max int) (int, error) {
	switch {
	case n < 0:
		return 0, Invalid("page_size", strconv.Itoa(int(n)), "zero (the default, "+strconv.Itoa(def)+") or positive (at most "+strconv.Itoa(max)+" are returned)")
	case n == 0:
		return def, nil
	case int(n) > max:
		return max, nil
	}
	return int(n), nil
}

// Invalid is the error for a bad request field: the controller's API
// boundary maps it to INVALID_ARGUMENT with a google.rpc.BadRequest field
// violation.
func Invalid(field, value, want string) error {
	return &topology.Error{Violations: []topology.FieldViolation{{Field: field, Value: value, Description: want}}}
}

// All walks a paged List from the first page: it calls page with "" and
// then with each next_page_token page returns, until one returns "". A
// token returned twice (a server that does not advance) ends it with an
// error instead of a loop.
func All(ctx context.Context, page func(ctx context.Context, token string) (next string, err error)) error {
	seen := map[string]bool{}
	token := ""
	for {
		next, err := page(ctx, token)
		if err != nil {
			return err
		}
		if next == "" {
			return nil
		}
		if seen[next] {
			return fmt.Errorf("the server returned page token %q twice: the listing does not advance", next)
		}
		seen[next] = true
		token = next
	}
}
