//go:build linux

package app

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// wakeAll makes every read blocked on an accepted connection return at
// once, without closing anything, and a closed connection is forgotten.
func TestTrackingListenerWakesEveryConnection(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newTrackingListener(raw, 7*time.Second)
	defer l.Close()
	const n = 5
	readErr := make(chan error, n)
	var accepted []net.Conn
	for range n {
		cc, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		accepted = append(accepted, c)
		go func() {
			_, err := c.Read(make([]byte, 1))
			readErr <- err
		}()
	}
	{
		// The option gRPC sets itself on connections it can see as TCP.
		sc, err := accepted[0].(*trackedConn).Conn.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var got int
		var gerr error
		if err := sc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if got != 7000 {
			t.Fatalf("TCP_USER_TIMEOUT %d ms, want 7000", got)
		}
	}
	if got := l.open(); got != n {
		t.Fatalf("open %d, want %d", got, n)
	}
	if got := l.wakeAll(); got != n {
		t.Fatalf("wakeAll woke %d, want %d", got, n)
	}
	for range n {
		if err := <-readErr; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a woken read: %v, want a deadline error", err)
		}
	}
	for i, c := range accepted {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		_ = c.Close() // twice: forgotten once
		if got := l.open(); got != n-i-1 {
			t.Fatalf("after closing %d: open %d, want %d", i+1, got, n-i-1)
		}
	}
}
