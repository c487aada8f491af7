//go:build !linux

package bench

// lowerPriority is left undone here: the agents' processes share the
// CPU with the controller at its priority.
func lowerPriority() error { return nil }
