package metadata

import (
	"encoding/json"
	"net/http"
)

// Handler serves the document current returns, as JSON, to GET and HEAD.
// Simulated hosts mount it at their product's metadata path (see
// products.MetadataPath); it answers on whatever path it is given. current is
// called on every request, so a rollover shows at once; a nil document is
// served as 503, the state of a host that publishes nothing yet.
func Handler(current func() *Document) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		d := current()
		if d == nil {
			http.Error(w, "no metadata document is published", http.StatusServiceUnavailable)
			return
		}
		b, err := json.Marshal(d)
		if err != nil {
			http.Error(w, "encode the metadata document: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(b)
	})
}
