package main

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/sse"
)

// accessLog logs every request with a request id (the client's X-Request-ID,
// or a new one, echoed in the response) and the session it concerns, never
// its tokens: query strings carry user and session tokens, so only the path
// is logged.
func accessLog(log *slog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			r := c.Request()
			id := r.Header.Get(echo.HeaderXRequestID)
			if id == "" || len(id) > 64 {
				var b [8]byte
				_, _ = rand.Read(b[:])
				id = hex.EncodeToString(b[:])
			}
			c.Response().Header().Set(echo.HeaderXRequestID, id)
			err := next(c)
			if err != nil {
				c.Error(err)
			}
			level := slog.LevelInfo
			if c.Response().Status >= http.StatusInternalServerError {
				level = slog.LevelWarn
			}
			attrs := []slog.Attr{
				slog.String("request_id", id),
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.Int("status", c.Response().Status),
				slog.Int64("bytes", c.Response().Size),
				slog.Duration("duration", time.Since(start)),
				slog.String("remote", c.RealIP()),
			}
			if sid := sessionOf(r); sid != "" {
				attrs = append(attrs, slog.String("session", sid))
			}
			log.LogAttrs(r.Context(), level, "request", attrs...)
			return nil
		}
	}
}

// sessionOf names the session a request concerns by its handle (never by
// anything that proves it), from its session token (LongPoll's last token
// parameter or header, SSE's Last-Event-ID) or an SSE POST's credential.
func sessionOf(r *http.Request) string {
	q := r.URL.Query()
	candidates := []string{r.Header.Get("X-Phoenix-Longpoll-Token"), r.Header.Get("Last-Event-ID"), q.Get("lastEventId")}
	if toks := q["token"]; len(toks) > 0 {
		candidates = append(candidates, toks[len(toks)-1])
	}
	for _, c := range candidates {
		if t, ok := gateway.ParseSessionToken(c); ok {
			return gateway.SessionHandle(t.SessionID)
		}
	}
	if t, ok := gateway.ParseSessionCredential(r.Header.Get(sse.SessionHeader)); ok {
		return gateway.SessionHandle(t.SessionID)
	}
	return ""
}
