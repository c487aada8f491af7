package powershell

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Product shells the driver runs a worker for.
const (
	ProductLync       = "lync"
	ProductExchange   = "exchange"
	ProductSharePoint = "sharepoint"
	// productDetect finds the installed products without loading any of them.
	productDetect = "detect"
)

// scriptFiles are the worker scripts. They are fixed: the driver writes
// them unchanged, and every value they act on arrives as JSON data on
// their standard input.
//
//go:embed scripts/*.ps1
var scriptFiles embed.FS

// scriptOf is the script each product's worker runs; common.ps1 is
// dot-sourced by each of them from its own directory.
var scriptOf = map[string]string{
	ProductLync:       "lync.ps1",
	ProductExchange:   "exchange.ps1",
	ProductSharePoint: "sharepoint.ps1",
	productDetect:     "detect.ps1",
}

// Scripts returns the embedded scripts by file name (for tests and the
// grammar check).
func Scripts() map[string][]byte {
	out := map[string][]byte{}
	entries, _ := fs.ReadDir(scriptFiles, "scripts")
	for _, e := range entries {
		b, _ := scriptFiles.ReadFile("scripts/" + e.Name())
		out[e.Name()] = b
	}
	return out
}

// writeScripts writes the embedded scripts into dir (created owner-only)
// and returns it. A file already there with other content, an edit by
// hand or an older agent's, is replaced: the binary's copy is the one that
// runs.
func writeScripts(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create script directory %s: %w", dir, err)
	}
	for name, b := range Scripts() {
		p := filepath.Join(dir, name)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, b) {
			continue
		}
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return fmt.Errorf("write script %s: %w", p, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("write script %s: %w", p, err)
		}
	}
	return nil
}
