package powershell

import (
	"encoding/json"
	"fmt"
	"strings"
)

// request is one line on the worker's standard input. Everything the
// operator or the topology supplied (host names, partner names, realms, URLs,
// thumbprints, key file paths and passwords) travels in Args, as data: the
// scripts never build code from it (no Invoke-Expression, no [scriptblock]::Create).
type request struct {
	ID   uint64 `json:"id"`
	Op   string `json:"op"`
	Args any    `json:"args,omitempty"`
}

// response is one line on the worker's standard output.
type response struct {
	ID     uint64          `json:"id"`
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *ErrorRecord    `json:"error,omitempty"`
}

// ErrorRecord is a PowerShell ErrorRecord as the worker projects it: the
// cmdlet that failed (InvocationInfo.MyCommand.Name), its
// FullyQualifiedErrorId, its CategoryInfo.Category and the exception's
// message. See
// https://learn.microsoft.com/dotnet/api/system.management.automation.errorrecord
type ErrorRecord struct {
	Cmdlet                string `json:"cmdlet"`
	FullyQualifiedErrorID string `json:"fullyQualifiedErrorId"`
	Category              string `json:"category"`
	Message               string `json:"message"`
}

// Error is a failed worker operation: the product shell, the operation and
// the cause, either a structured PowerShell error (Record) or a failure of
// the worker itself (Err: the process could not start, exited, timed out,
// or answered something that is not a response).
type Error struct {
	Product string
	Op      string
	Record  *ErrorRecord
	Err     error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s: ", productTitle(e.Product), e.Op)
	if r := e.Record; r != nil {
		if r.Cmdlet != "" {
			b.WriteString(r.Cmdlet + ": ")
		}
		b.WriteString(strings.TrimSpace(r.Message))
		var tags []string
		if r.FullyQualifiedErrorID != "" {
			tags = append(tags, "FullyQualifiedErrorId "+r.FullyQualifiedErrorID)
		}
		if r.Category != "" {
			tags = append(tags, "category "+r.Category)
		}
		if len(tags) > 0 {
			b.WriteString(" (" + strings.Join(tags, ", ") + ")")
		}
		return b.String()
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// productTitle names a product shell the way its administrators do.
func productTitle(p string) string {
	switch p {
	case ProductLync:
		return "lync/skype for business"
	case ProductExchange:
		return "exchange"
	case ProductSharePoint:
		return "sharepoint"
	case productDetect:
		return "product detection"
	}
	return p
}
