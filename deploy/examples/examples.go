// Package examples embeds the example topologies, so the demo runs from
// any directory.
package examples

import _ "embed"

// Contoso is deploy/examples/contoso.yaml: SPEC.md's topology.
//
//go:embed contoso.yaml
var Contoso []byte
