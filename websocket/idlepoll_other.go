//go:build !linux

package websocket

import (
	"errors"
	"log/slog"
)

// idlePoller is not available here: each connection waits on its own
// goroutine.
type idlePoller struct{}

func sharedIdlePoller(*slog.Logger) *idlePoller { return nil }

func (*idlePoller) add(*socket)    {}
func (*idlePoller) remove(*socket) {}

func (*idlePoller) arm(int, *socket) error { return errors.New("websocket: no idle poller here") }
