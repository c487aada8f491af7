//go:build !linux

package app

import (
	"net"
	"time"
)

// setUserTimeout does nothing where gRPC sets no TCP_USER_TIMEOUT either.
func setUserTimeout(net.Conn, time.Duration) error { return nil }
