package cmd

import (
	"strconv"
	"strings"
	"testing"

	"github.com/s2strust/s2strust/internal/topology"
)

// A topology over the size limit is refused naming the limit and the size,
// also beyond the gRPC message limit where the controller could only
// answer a bare RESOURCE_EXHAUSTED; nothing is stored.
func TestApplyOverSizeLimit(t *testing.T) {
	dir := t.TempDir()
	startController(t, dir)
	for _, size := range []int{topology.MaxDocumentSize + 1, 5 << 20} {
		doc := "name: contoso\n" + strings.Repeat("#", size-len("name: contoso\n"))
		file := writeFile(t, "big.yaml", []byte(doc))
		_, err := mustFail(t, dir, "apply", "-f", file)
		wantContains(t, "error", err.Error(), "the limit is 1048576 bytes", "is "+strconv.Itoa(size)+" bytes")
		wantNotContains(t, "error", err.Error(), "ResourceExhausted")
	}
	_, err := mustFail(t, dir, "get", "topology")
	wantRPCError(t, err, "NotFound")
}
