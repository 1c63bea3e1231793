package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"time"
)

// RaiseFileLimit raises this process's soft limit of open files to its hard
// limit, since every client holds a socket (two for a long-poll client
// pushing while it polls), and returns the soft limit now in force.
func RaiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("setrlimit NOFILE to %d: %w", lim.Max, err)
		}
	}
	return lim.Cur, nil
}

// dialPool holds one HTTP client per loopback source address, so that the
// clients' sockets spread over 127.0.0.1..127.0.0.N: each (source address,
// destination) pair has its own ~28,000 ephemeral ports, and long-poll
// clients leave sockets in TIME_WAIT behind them.
type dialPool struct {
	transports []*http.Transport
	clients    []*http.Client
	dialers    []*net.Dialer // for WebSocket clients, which dial themselves
}

// newDialPool builds n transports (n source addresses; 1 means the
// system's choice). idle is how many idle keep-alive connections a
// transport keeps per host: enough for every client, so that polls and
// POSTs reuse connections instead of opening new ones.
func newDialPool(n, idle int) *dialPool {
	p := &dialPool{}
	for i := range n {
		d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
		if n > 1 {
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i+1))}
		}
		t := &http.Transport{
			Proxy:               nil, // never an HTTP proxy from the environment: we measure the target
			DialContext:         d.DialContext,
			MaxIdleConns:        0, // no limit
			MaxIdleConnsPerHost: idle,
			MaxConnsPerHost:     0, // no limit
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			// No response or idle-read timeouts: streams are idle for long
			// stretches. Requests carry their own contexts.
			ReadBufferSize:  2048,
			WriteBufferSize: 1024,
			Protocols:       new(http.Protocols),
		}
		t.Protocols.SetHTTP1(true) // no HTTP/2: one stream per connection, as browsers on HTTP/1.1
		p.transports = append(p.transports, t)
		p.dialers = append(p.dialers, d)
		p.clients = append(p.clients, &http.Client{
			Transport: t,
			// Redirects are an error of the target, not something to follow.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		})
	}
	return p
}

// client returns the HTTP client for the i-th user of the pool.
func (p *dialPool) client(i int) *http.Client { return p.clients[i%len(p.clients)] }

// close closes the idle connections of every transport.
func (p *dialPool) close() {
	for _, t := range p.transports {
		t.CloseIdleConnections()
	}
}

// allLoopback reports whether every URL's host is a loopback address, so
// that loopback source addresses can reach it.
func allLoopback(urls []string) bool {
	for _, s := range urls {
		u, err := url.Parse(s)
		if err != nil {
			return false
		}
		h := u.Hostname()
		if h == "localhost" {
			continue
		}
		ip := net.ParseIP(h)
		if ip == nil || ip.To4() == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// errorKind names an error for the report's errors-by-kind table.
func errorKind(err error) string {
	var nerr net.Error
	switch {
	case err == nil:
		return ""
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connect_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "conn_reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return "no_free_port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too_many_open_files"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &nerr) && nerr.Timeout():
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "conn_closed"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "net_error"
}
