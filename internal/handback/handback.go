// Package handback lets a handler that took a connection from net/http
// (Hijack) give it back for the client's next request: its Listener's
// Accept returns the connections given back as well as new ones, so an
// http.Server serving it reads the next request on a given-back connection
// as on a new one.
//
// The LongPoll transport uses it to answer a waiting poll without holding
// a goroutine and net/http's buffers while it waits, on a connection the
// browser reuses (keep-alive) for its next poll.
package handback

import (
	"errors"
	"net"
	"net/http"
	"sync"
)

// Listener wraps a net.Listener; see the package comment.
type Listener struct {
	net.Listener
	back     chan net.Conn
	accepted chan acceptResult
	closed   chan struct{}

	startOnce sync.Once
	closeOnce sync.Once
}

type acceptResult struct {
	conn net.Conn
	err  error
}

// Wrap returns a Listener accepting from ln and the connections given back.
func Wrap(ln net.Listener) *Listener {
	return &Listener{
		Listener: ln,
		back:     make(chan net.Conn),
		accepted: make(chan acceptResult),
		closed:   make(chan struct{}),
	}
}

// Accept returns the next new or given-back connection.
func (l *Listener) Accept() (net.Conn, error) {
	l.startOnce.Do(func() { go l.acceptNew() })
	// Once closed, closed wins over anything else ready.
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.back:
		return c, nil
	case r := <-l.accepted:
		return r.conn, r.err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// acceptNew accepts from the wrapped listener until it is closed. Errors
// go to Accept's caller (http.Server retries the temporary ones).
func (l *Listener) acceptNew() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- acceptResult{c, err}:
		case <-l.closed:
			if c != nil {
				_ = c.Close()
			}
			return
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// Close stops accepting: Accept returns net.ErrClosed, and connections
// given back from then on are closed.
func (l *Listener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.Listener.Close()
	})
	return err
}

// Return gives conn back, to be served by the caller of Accept. early holds
// bytes of the next request already read from conn (they are read first).
// It waits for Accept, and closes conn instead if the listener is closed;
// it reports whether conn was given back.
func (l *Listener) Return(conn net.Conn, early []byte) bool {
	// A connection given back before is one already: it gets the new bytes
	// rather than another layer, however many times it comes back.
	if pc, ok := conn.(*prefixedConn); ok {
		if len(early) > 0 || len(pc.early) > 0 {
			pc.early = append(early, pc.early...)
			early = nil
		} else {
			// All read, nothing new: the plain connection again, which
			// a parked poll can watch without a goroutine (it is a
			// syscall.Conn).
			conn = pc.Conn
		}
	}
	if len(early) > 0 {
		conn = &prefixedConn{Conn: conn, early: early}
	}
	select {
	case l.back <- conn:
		return true
	case <-l.closed:
		_ = conn.Close()
		return false
	}
}

// prefixedConn reads early before the connection.
type prefixedConn struct {
	net.Conn
	early []byte
}

func (c *prefixedConn) Read(b []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(b, c.early)
		c.early = c.early[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// HijackedWriter stands in for the response of a hijacked request in a
// pooled request context (echo's): the context would otherwise keep
// net/http's response, and through it the connection's buffers (about
// 10 KiB), until the context is reused. Writes fail with http.ErrHijacked.
type HijackedWriter struct{}

// Header returns an empty header, detached from any response.
func (HijackedWriter) Header() http.Header { return http.Header{} }

// Write reports http.ErrHijacked.
func (HijackedWriter) Write([]byte) (int, error) { return 0, http.ErrHijacked }

// WriteHeader does nothing.
func (HijackedWriter) WriteHeader(int) {}
