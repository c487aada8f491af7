package server

import (
	"fmt"
	"testing"

	"github.com/s2strust/s2strust/internal/topology"
)

func TestRenderWarnings(t *testing.T) {
	one := renderWarnings("contoso.yaml", []topology.FieldViolation{{
		Field: "deployments[0].tokenIssuer.secret", Value: "oauth-2026", Line: 14, Column: 18,
		Description: "certificate X: SAN does not list fabrikam.com, an additional SIP domain (rule san-additional-domain)",
	}})
	want := `contoso.yaml:14:18: deployments[0].tokenIssuer.secret: "oauth-2026": certificate X: SAN does not list fabrikam.com, an additional SIP domain (rule san-additional-domain)`
	if len(one) != 1 || one[0] != want {
		t.Errorf("renderWarnings = %q, want [%q]", one, want)
	}

	var many []topology.FieldViolation
	for i := range MaxWarnings + 2 {
		many = append(many, topology.FieldViolation{Field: fmt.Sprintf("deployments[%d].tokenIssuer.secret", i), Description: "expires soon"})
	}
	got := renderWarnings("t.yaml", many)
	if len(got) != MaxWarnings+1 || got[MaxWarnings] != "t.yaml: and 2 more warnings" {
		t.Errorf("renderWarnings of %d warnings gave %d lines, the last %q", len(many), len(got), got[len(got)-1])
	}
	if got := renderWarnings("t.yaml", nil); len(got) != 0 {
		t.Errorf("renderWarnings of none = %q", got)
	}
}
