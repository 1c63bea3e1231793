//go:build unix

package websocket

import (
	"bufio"
	"errors"
	"net"
	"syscall"
)

// readableWaiter returns a function that waits until br holds unread bytes
// or conn can be read, without reading, on the caller's (shallow) stack:
// a connection that waits holds a 2 KiB stack instead of the 4 KiB of a
// goroutine blocked inside the WebSocket reader. It honours the read
// deadline. nil when conn is not a plain socket (TLS, a test pipe).
func readableWaiter(conn net.Conn, br *bufio.Reader) func() error {
	sc, ok := conn.(syscall.Conn)
	if !ok || br == nil {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var b [1]byte
	var peekErr error
	ready := func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			return true
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
			return false // wait for the poller
		case err == nil:
			return true // end of stream: the reader sees it
		}
		peekErr = err
		return true
	}
	return func() error {
		if br.Buffered() > 0 {
			return nil
		}
		peekErr = nil
		if err := raw.Read(ready); err != nil {
			return err
		}
		return peekErr
	}
}

// rawConnOf returns conn's raw connection, or nil if it is not a plain
// socket.
func rawConnOf(conn net.Conn) syscall.RawConn {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// pending reports whether raw's connection can be read without waiting
// (bytes, the end of the stream, or an error); it does not read.
func pending(raw syscall.RawConn) bool {
	var b [1]byte
	ready := true
	err := raw.Control(func(fd uintptr) {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ready = !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EINTR)
	})
	return ready || err != nil
}
