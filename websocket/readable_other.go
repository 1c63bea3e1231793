//go:build !unix

package websocket

import (
	"bufio"
	"net"
)

// readableWaiter is not available here: the reading goroutine waits inside
// the WebSocket reader.
func readableWaiter(net.Conn, *bufio.Reader) func() error { return nil }
