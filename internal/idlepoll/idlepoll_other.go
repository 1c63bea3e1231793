//go:build !linux

package idlepoll

import (
	"errors"
	"log/slog"
	"syscall"
)

// Poller is not available here: each connection waits on its own
// goroutine.
type Poller struct{}

// Shared returns nil: there is no poller here.
func Shared(*slog.Logger) *Poller { return nil }

// Add does nothing.
func (*Poller) Add(*Waiter, func()) {}

// Remove does nothing.
func (*Waiter) Remove() {}

// Arm fails: there is no poller here.
func (*Waiter) Arm(int) error { return errors.New("idlepoll: no poller here") }

// What Peek found on a connection.
const (
	// Nothing: nothing to read yet.
	Nothing = iota
	// Data: bytes wait to be read.
	Data
	// Closed: the peer closed the connection, or it failed.
	Closed
)

// Peek reports Closed: without a poller nothing is parked to peek at.
func Peek(syscall.RawConn) int { return Closed }
