package app

import (
	"net"
	"sync"
	"time"
)

// trackingListener remembers the connections it accepted until they are
// closed, so that a stop can wake them all at once (wakeAll).
//
// A forced gRPC stop (grpc.Server.Stop) closes its connections one after
// another, and each close waits until that connection's reader goroutine
// has run and let go of the socket: with thousands of agents on a loaded
// machine, a scheduling delay per connection, seconds in all. Waking every
// reader first (an expired deadline) lets them unwind in parallel, so the
// closes that follow no longer wait.
type trackingListener struct {
	net.Listener
	// userTimeout is the TCP_USER_TIMEOUT set on each connection (0: none),
	// which gRPC would have set had the connection not been wrapped.
	userTimeout time.Duration
	mu          sync.Mutex
	conns       map[*trackedConn]struct{}
}

func newTrackingListener(l net.Listener, userTimeout time.Duration) *trackingListener {
	return &trackingListener{Listener: l, userTimeout: userTimeout, conns: map[*trackedConn]struct{}{}}
}

// Accept accepts a connection and tracks it until it is closed.
func (l *trackingListener) Accept() (net.Conn, error) {
	var c net.Conn
	for {
		var err error
		if c, err = l.Listener.Accept(); err != nil {
			return nil, err
		}
		if l.userTimeout <= 0 {
			break
		}
		// As gRPC does, a connection whose option cannot be set is
		// dropped (an error here would stop the server's accept loop).
		if err := setUserTimeout(c, l.userTimeout); err == nil {
			break
		}
		c.Close()
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	return tc, nil
}

// open is the number of accepted connections not closed yet.
func (l *trackingListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// wakeAll makes every open connection's pending and future reads and
// writes fail at once (without waiting for anything), and returns how
// many it woke.
func (l *trackingListener) wakeAll() int {
	l.mu.Lock()
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	past := time.Unix(1, 0)
	for _, c := range conns {
		_ = c.Conn.SetDeadline(past)
	}
	return len(conns)
}

// trackedConn is an accepted connection, forgotten by its listener when closed.
type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
