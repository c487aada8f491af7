// Package progress shows how far something that waits has come: the demo
// waiting for its fleet to converge, a rollout being followed, a benchmark
// connecting its agents. On a terminal it is one live line, redrawn in
// place (a bar when the total is known); anywhere else (a pipe, a log
// file, a CI job) it is a plain line each time the count changes, so logs
// get no carriage returns and no line per tick.
//
// It writes to the writer given, meant to be standard error, so a command's
// standard output stays its result.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/s2strust/s2strust/internal/termsafe"
)

// barWidth is the bar's width in characters.
const barWidth = 24

// Counter is a live count of done out of total (total 0: unknown). It is
// safe for concurrent use; the zero value is not (use New).
type Counter struct {
	mu    sync.Mutex
	w     io.Writer
	tty   bool
	what  string
	total int
	start time.Time
	now   func() time.Time
	// last is the line last written, so that an unchanged count writes
	// nothing in plain mode; drawn is whether a live line is on screen.
	last  string
	drawn bool
}

// New starts a counter of what ("hosts converged") writing to w, live when
// w is a terminal (an *os.File on one).
func New(w io.Writer, what string, total int) *Counter {
	return NewWithMode(w, what, total, IsTerminal(w))
}

// NewWithMode is New with the terminal decision made by the caller (tests).
func NewWithMode(w io.Writer, what string, total int, live bool) *Counter {
	return &Counter{w: w, tty: live, what: termsafe.String(what), total: total, start: time.Now(), now: time.Now}
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Set records done (and a new total when total > 0) with an optional note
// ("waiting for ex01.contoso.com"), and shows it.
func (c *Counter) Set(done, total int, note string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if total > 0 {
		c.total = total
	}
	count := fmt.Sprintf("%d", done)
	if c.total > 0 {
		count = fmt.Sprintf("%d/%d", done, c.total)
	}
	line := fmt.Sprintf("%s %s", count, c.what)
	if note != "" {
		line += ": " + termsafe.String(note)
	}
	if !c.tty {
		if line != c.last {
			fmt.Fprintln(c.w, line)
			c.last = line
		}
		return
	}
	bar := ""
	if c.total > 0 {
		n := min(barWidth, max(0, done*barWidth/c.total))
		bar = "[" + strings.Repeat("#", n) + strings.Repeat(".", barWidth-n) + "] "
	}
	elapsed := c.now().Sub(c.start).Round(time.Second)
	// \r and clear-to-end-of-line redraw the line in place.
	fmt.Fprintf(c.w, "\r\x1b[K%s%s (%s)", bar, line, elapsed)
	c.last, c.drawn = line, true
}

// Done ends the live line (so what is printed next starts on its own
// line); in plain mode it prints nothing more.
func (c *Counter) Done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty && c.drawn {
		fmt.Fprintln(c.w)
		c.drawn = false
	}
}

// Clear takes the live line off the screen, so that a line printed on the
// same terminal (a command's result on standard output) does not run into
// it; the next Set draws it again below. In plain mode it prints nothing.
func (c *Counter) Clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty && c.drawn {
		fmt.Fprint(c.w, "\r\x1b[K")
		c.drawn = false
	}
}
