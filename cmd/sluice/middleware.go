package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/gateway"
)

// noStore marks every answer under /socket/ as never to be stored by a
// cache, errors (404, 405) included: they name sessions and carry replies.
// It sets the header before the handler runs, so a transport that wants a
// more specific one (the event stream's "no-cache, no-store, no-transform",
// LongPoll's "no-store, private") replaces it.
func noStore(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if strings.HasPrefix(c.Request().URL.Path, "/socket/") {
			c.Response().Header().Set("Cache-Control", "no-store")
		}
		return next(c)
	}
}

// readBodyWithin reads a request's body, up to maxBytes+1 bytes, before its
// handler runs, under a read deadline of timeout: a client that sends its
// headers and then trickles the body (or nothing) is answered 408 and its
// connection closed, instead of holding it for ever. net/http's
// ReadHeaderTimeout covers only the headers.
//
// The deadline is set only while the body is read, and cleared once it is
// read whole: requests without a body (SSE streams, waiting polls) and the
// handling after the read (a poll waiting for messages, a slow store) are
// never cut by it. A body larger than maxBytes keeps the deadline, so the
// handler's 413 and the server's draining of the rest stay bounded too.
//
// The handler then reads the body from memory, so its own limits (413)
// apply as before.
func readBodyWithin(timeout time.Duration, maxBytes int64, obs gateway.Observer) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := c.Request()
			if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
				return next(c)
			}
			rc := http.NewResponseController(c.Response())
			// A writer without deadlines (a test's recorder) reads without one.
			_ = rc.SetReadDeadline(time.Now().Add(timeout))
			body, err := io.ReadAll(io.LimitReader(r.Body, maxBytes+1))
			if err != nil {
				c.Response().Header().Set("Connection", "close")
				if isTimeout(err) {
					obs.Refused(refusalTransport(r.URL.Path), "body_timeout")
					return bodyError(c, http.StatusRequestTimeout, fmt.Sprintf("request body not received within %s (--body-timeout); nothing was applied", timeout))
				}
				return bodyError(c, http.StatusBadRequest, "reading request body: "+err.Error())
			}
			if int64(len(body)) <= maxBytes {
				// net/http clears it too when an HTTP/1 body ends (it then
				// watches the connection); HTTP/2 streams keep theirs.
				_ = rc.SetReadDeadline(time.Time{})
			}
			r.Body = readCloser{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
			return next(c)
		}
	}
}

// readCloser is a request body read first from memory, then from the
// connection.
type readCloser struct {
	io.Reader
	io.Closer
}

// isTimeout reports whether err is a read deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// refusalTransport labels a refusal of a request to path in
// sluice_requests_refused_total.
func refusalTransport(path string) string {
	switch {
	case strings.HasPrefix(path, "/socket/longpoll"):
		return "longpoll"
	case strings.HasPrefix(path, "/socket/sse"):
		return "sse"
	case strings.HasPrefix(path, "/api/"):
		return "api"
	}
	return "http"
}

// bodyError answers a request whose body could not be read, in the shape
// its route answers errors: {"status": code, "error": ...} under /socket/
// (LongPoll's envelope, and the SSE POST's), {"error": ...} elsewhere.
func bodyError(c echo.Context, code int, msg string) error {
	if strings.HasPrefix(c.Request().URL.Path, "/socket/") {
		return c.JSON(code, map[string]any{"status": code, "error": msg})
	}
	return c.JSON(code, map[string]string{"error": msg})
}
