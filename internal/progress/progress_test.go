package progress

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestPlainLinesOnlyWhenTheCountChanges(t *testing.T) {
	var b bytes.Buffer
	c := New(&b, "hosts converged", 3) // a buffer is no terminal
	c.Set(0, 0, "")
	c.Set(0, 0, "")
	c.Set(1, 0, "waiting for ex01.contoso.com\x1b[2J")
	c.Set(3, 0, "")
	c.Done()
	want := "0/3 hosts converged\n1/3 hosts converged: waiting for ex01.contoso.com\\x1b[2J\n3/3 hosts converged\n"
	if b.String() != want {
		t.Errorf("plain output %q, want %q", b.String(), want)
	}
}

func TestLiveLineRedrawsInPlace(t *testing.T) {
	var b bytes.Buffer
	c := NewWithMode(&b, "hosts converged", 4, true)
	c.Set(1, 0, "")
	c.Set(4, 0, "")
	c.Done()
	out := b.String()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Errorf("live output %q: want one line, ended once by Done", out)
	}
	if strings.Count(out, "\r\x1b[K") != 2 {
		t.Errorf("live output %q: want each update to redraw the line", out)
	}
	for _, w := range []string{"[######..................] 1/4 hosts converged", "[########################] 4/4 hosts converged"} {
		if !strings.Contains(out, w) {
			t.Errorf("live output %q lacks %q", out, w)
		}
	}
}

func TestUnknownTotalAndFiles(t *testing.T) {
	var b bytes.Buffer
	c := NewWithMode(&b, "agents connected", 0, true)
	c.Set(7, 0, "")
	if strings.Contains(b.String(), "] ") || !strings.Contains(b.String(), "7 agents connected") {
		t.Errorf("unknown total printed %q, want a bare count", b.String())
	}
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Error("a regular file is taken for a terminal")
	}
}

func TestClearTakesTheLiveLineOff(t *testing.T) {
	var b bytes.Buffer
	c := NewWithMode(&b, "hosts passed", 2, true)
	c.Clear() // nothing drawn yet: nothing to clear
	c.Set(1, 0, "")
	c.Clear()
	b.WriteString("a result line\n")
	c.Set(2, 0, "")
	c.Done()
	out := b.String()
	if !strings.HasPrefix(out, "\r\x1b[K[") || !strings.Contains(out, " (0s)\r\x1b[Ka result line\n\r\x1b[K[####") || strings.Count(out, "\n") != 2 {
		t.Errorf("live output %q: want the line cleared before the result, drawn again after it", out)
	}
	var plain bytes.Buffer
	p := New(&plain, "hosts passed", 2)
	p.Set(1, 0, "")
	p.Clear()
	if plain.String() != "1/2 hosts passed\n" {
		t.Errorf("plain output %q: Clear printed something", plain.String())
	}
}
