//go:build !unix

package websocket

import (
	"bufio"
	"net"
	"syscall"
)

// readableWaiter is not available here: the reading goroutine waits inside
// the WebSocket reader.
func readableWaiter(net.Conn, *bufio.Reader) func() error { return nil }

// rawConnOf is not used here.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

// pending is not used here.
func pending(syscall.RawConn) bool { return true }
