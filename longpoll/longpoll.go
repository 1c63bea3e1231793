// Package longpoll serves Phoenix's LongPoll transport, so that an unmodified
// phoenix.js client (`new Socket("/socket", {transport: LongPoll})`) talks to
// Sluice as it would to Phoenix. Every answer is HTTP 200 with a JSON body
// whose "status" carries the outcome, as Phoenix's is; Sluice adds an "error"
// field to refusals so that curl users see why.
//
// The transport is thin: the gateway does the channel work. Unlike Phoenix's,
// the session token carries the client's delivery cursor, so any instance can
// answer any request, and a poll retried after a lost response gets the same
// messages again.
package longpoll

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/parkset"
)

// Config tunes the transport.
type Config struct {
	// Window is how long a poll waits for messages before answering 204.
	// Keep it well under phoenix.js's 20 s request timeout. Default 10s.
	Window time.Duration
	// MaxBodyBytes bounds a POST body; larger ones get 413. Default 1 MiB.
	MaxBodyBytes int64
	// MaxFrames bounds the frames of one POST batch (phoenix.js sends at most
	// 100). A larger batch is refused whole rather than cut silently.
	MaxFrames int
	// Origins, when set, refuses requests whose Origin it does not allow,
	// with {"status":403}, as Phoenix's check_origin does.
	Origins *gateway.OriginChecker
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
}

// Transport is the LongPoll HTTP handler.
type Transport struct {
	gw  *gateway.Gateway
	cfg Config

	// handback, set by ParkWith, gives a connection back to the server.
	handback func(conn net.Conn, early []byte) bool
	// idleTimeout is how long an answered poll's connection may wait for
	// the next request before it is closed.
	idleTimeout time.Duration
	// parked holds the polls waiting without a goroutine (parked.go).
	parked parkset.Set[*parkedPoll]
}

// New returns a Transport serving gw.
func New(gw *gateway.Gateway, cfg Config) *Transport {
	if cfg.Window <= 0 {
		cfg.Window = 10 * time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.MaxFrames <= 0 {
		cfg.MaxFrames = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Transport{gw: gw, cfg: cfg}
}

// ParkWith parks waiting HTTP/1.1 polls (parked.go): they hold no goroutine
// and no net/http buffers while they wait. handback gives a connection back
// to the server for its client's next request (handback.Listener's Return)
// and reports whether it did. A connection is given back once the next
// request begins, and closed if none begins within idleTimeout (the
// server's IdleTimeout: net/http would give a new connection only its
// ReadHeaderTimeout, and proxies that pool connections would race its
// close). Call it before the transport serves; without it, every poll waits
// in its handler.
func (t *Transport) ParkWith(handback func(conn net.Conn, early []byte) bool, idleTimeout time.Duration) {
	t.handback, t.idleTimeout = handback, idleTimeout
	t.gw.OnDrain(t.drainParked)
}

// Register mounts the transport at path (Phoenix's is "/socket/longpoll").
func (t *Transport) Register(e *echo.Echo, path string) {
	e.Any(path, t.Serve)
}

// Serve answers one LongPoll request.
func (t *Transport) Serve(c echo.Context) error {
	h := c.Response().Header()
	h.Set("Cache-Control", "no-store, private")
	h.Set("X-Accel-Buffering", "no")
	// Checked before anything else, preflights included, as Phoenix does;
	// a refused origin gets no CORS grant at all, so its page can neither
	// pass a preflight nor read an answer.
	if origin := c.Request().Header.Get("Origin"); !t.cfg.Origins.Allowed(origin) {
		t.gw.Observer().Refused(transportName, "origin")
		return send(c, http.StatusOK, replyBody{Status: http.StatusForbidden, Error: "origin " + origin + " is not allowed"})
	}
	h.Set("Access-Control-Allow-Origin", "*")
	switch c.Request().Method {
	case http.MethodOptions:
		// CORS preflight, as Phoenix answers it.
		h.Set("Access-Control-Allow-Headers", c.Request().Header.Get("Access-Control-Request-Headers"))
		h.Set("Access-Control-Allow-Methods", "get, post, options")
		h.Set("Access-Control-Max-Age", "3600")
		return c.NoContent(http.StatusOK)
	case http.MethodGet, http.MethodPost:
		if c.Request().Method == http.MethodGet {
			return t.poll(c)
		}
		return t.publish(c)
	default:
		return c.NoContent(http.StatusBadRequest)
	}
}

// replyBody is a LongPoll answer body. Fields are in Phoenix's (sorted) order.
type replyBody struct {
	Error    string   `json:"error,omitempty"`
	Messages []string `json:"messages,omitempty"`
	Status   int      `json:"status"`
	Token    string   `json:"token,omitempty"`
}

// pollReply always carries messages, even empty, as Phoenix's GET answers do.
type pollReply struct {
	Messages []string `json:"messages"`
	Status   int      `json:"status"`
	Token    string   `json:"token"`
}

// jsonType is the Content-Type of every answer.
const jsonType = "application/json; charset=utf-8"

// encodeReply encodes an answer body. Error strings are for people reading
// them in a terminal: no \u003c for "<". The body is JSON and says so; it
// is never HTML.
func encodeReply(body any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(body); err != nil {
		return nil, fmt.Errorf("encode longpoll reply: %w", err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func send(c echo.Context, httpStatus int, body any) error {
	b, err := encodeReply(body)
	if err != nil {
		return err
	}
	return c.Blob(httpStatus, jsonType, b)
}

// answer is a poll's answer, for the handler to send or a parked poll to
// write itself.
type answer struct {
	status int // HTTP status
	body   any
	// retryAfter: the failure is transient (Retry-After: 1).
	retryAfter bool
	// close: the connection is closed after the answer (draining).
	close bool
}

// reply sends a through echo.
func reply(c echo.Context, a answer) error {
	if a.retryAfter {
		c.Response().Header().Set("Retry-After", "1")
	}
	if a.close {
		c.Response().Header().Set("Connection", "close")
	}
	return send(c, a.status, a.body)
}

// transportName labels this transport's metrics.
const transportName = "longpoll"

// unavailable answers a request the gateway could not serve, almost always
// because the shared store did not answer: HTTP 500 with {"status":500}.
// phoenix.js reads only the body's status, and of the error statuses it
// knows only 403 (give up) and 500 (reconnect with backoff); any other, 503
// included, makes its poll loop throw. The HTTP status is the body's, so
// that curl, logs and proxies see the same number; Retry-After and the
// error string say it is transient.
func (t *Transport) unavailable(c echo.Context) error {
	return reply(c, t.unavailableAnswer())
}

// unavailableAnswer is unavailable's answer.
func (t *Transport) unavailableAnswer() answer {
	t.gw.Observer().Refused(transportName, "unavailable")
	return answer{status: http.StatusInternalServerError, body: replyBody{Status: http.StatusInternalServerError, Error: "temporarily unavailable: the shared store did not answer; retry"}, retryAfter: true}
}

// sessionToken finds the session token: the X-Phoenix-LongPoll-Token header
// (phoenix.js 1.9), else the LAST `token` query parameter, because phoenix.js
// appends it after the app's own params, which often hold the user token too.
func sessionToken(r *http.Request) string {
	if v := r.Header.Get("X-Phoenix-Longpoll-Token"); v != "" {
		return v
	}
	vals := r.URL.Query()["token"]
	if len(vals) == 0 {
		return ""
	}
	return vals[len(vals)-1]
}

// userToken finds the user token for a new session: X-Phoenix-AuthToken
// (phoenix.js authToken option), else the first `token` parameter that is not
// a session token.
func userToken(r *http.Request) string {
	if v := r.Header.Get("X-Phoenix-AuthToken"); v != "" {
		return v
	}
	for _, v := range r.URL.Query()["token"] {
		if _, ok := gateway.ParseSessionToken(v); !ok && v != "" {
			return v
		}
	}
	return ""
}

func (t *Transport) poll(c echo.Context) error {
	r := c.Request()
	obs := t.gw.Observer()
	info := gateway.ConnectInfo{Params: r.URL.Query(), Token: userToken(r), Vsn: r.URL.Query().Get("vsn")}
	// Why a presented session token is not used, for the answer when no
	// new session can be made either.
	refusedToken, refusedStatus := "", http.StatusForbidden
	if tok, ok := gateway.ParseSessionToken(sessionToken(r)); ok {
		if err := t.gw.VerifySession(tok); err != nil {
			// As Phoenix does with a token that does not verify: no
			// session; a new one is made below if the request has a user
			// token. The forged token reads nothing.
			obs.Refused(transportName, "bad_session_key")
			t.cfg.Logger.Warn("longpoll: session token refused", "session", gateway.LogSession(tok.SessionID), "err", err)
			refusedToken = "the session token is not valid (" + err.Error() + ")"
		} else if done, err := t.pollSession(c, tok, info); done {
			return err
		} else {
			refusedToken, refusedStatus = "the session expired or ended", http.StatusGone
		}
	}
	return reply(c, t.connect(r.Context(), info, refusedToken, refusedStatus))
}

// connect starts a new session for a poll without a usable one, and says
// why not when it cannot: refusedToken (with refusedStatus) is why the
// poll's session token was not used, if it had one.
func (t *Transport) connect(ctx context.Context, info gateway.ConnectInfo, refusedToken string, refusedStatus int) answer {
	obs := t.gw.Observer()
	tok, err := t.gw.Connect(ctx, info)
	switch {
	case err == nil:
		return answer{status: http.StatusOK, body: pollReply{Messages: []string{}, Status: http.StatusGone, Token: t.gw.WithKey(tok).String()}}
	case errors.Is(err, gateway.ErrDraining):
		// Shutting down: phoenix.js reconnects at once (10 ms), and the load
		// balancer sends it elsewhere. HTTP and body status agree, as in
		// unavailable.
		obs.Refused(transportName, "draining")
		return answer{status: http.StatusInternalServerError, body: replyBody{Status: http.StatusInternalServerError, Error: err.Error()}, close: true}
	case errors.Is(err, gateway.ErrTooManySessions):
		obs.Refused(transportName, "too_many_sessions")
		return answer{status: http.StatusOK, body: replyBody{Status: http.StatusForbidden, Error: err.Error()}}
	case errors.Is(err, gateway.ErrUnauthorized) && refusedToken != "" && info.Token == "":
		// A session token alone, and no session: say why, and how to
		// start again, rather than "missing token".
		obs.Refused(transportName, "no_session")
		return answer{status: http.StatusOK, body: replyBody{Status: refusedStatus, Error: refusedToken + "; to start a new session, GET /socket/longpoll?vsn=2.0.0&token=<user token>"}}
	case errors.Is(err, gateway.ErrUnauthorized), errors.Is(err, gateway.ErrUnsupportedVsn):
		t.cfg.Logger.Info("connect refused", "err", err)
		obs.Refused(transportName, "unauthorized")
		return answer{status: http.StatusOK, body: replyBody{Status: http.StatusForbidden, Error: err.Error()}}
	default:
		t.cfg.Logger.Error("connect failed", "err", err)
		return t.unavailableAnswer()
	}
}

// pollSession answers a poll of an existing session whose credential
// verified. It reports done=false, having answered nothing, when the session
// is gone: the caller then starts a new one, as Phoenix does (phoenix.js
// 1.8.2+ sees a 410 while holding a token as "session gone" and reconnects,
// rejoining its channels).
func (t *Transport) pollSession(c echo.Context, tok gateway.SessionToken, info gateway.ConnectInfo) (done bool, err error) {
	r := c.Request()
	obs := t.gw.Observer()
	ctx := t.asUser(r.Context(), info)
	if t.canPark(c) {
		return t.pollParked(c, ctx, tok, info)
	}
	obs.Open(transportName, 1)
	d, err := t.gw.Poll(ctx, tok, t.cfg.Window)
	obs.Open(transportName, -1)
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return true, nil // the client went away
	}
	return t.sendPolled(c, tok, d, err)
}

// sendPolled sends the answer to a poll that got d or err, through echo;
// done=false, having sent nothing, when the session is gone.
func (t *Transport) sendPolled(c echo.Context, tok gateway.SessionToken, d *gateway.Delivery, err error) (done bool, _ error) {
	a, ok := t.polled(tok, d, err)
	if !ok {
		return false, nil
	}
	err = reply(c, a)
	if d != nil {
		d.Observe(t.gw.Observer(), transportName)
	}
	return true, err
}

// polled is the answer to a poll of tok's session that got d or err;
// ok=false when the session is gone (the caller starts a new one).
func (t *Transport) polled(tok gateway.SessionToken, d *gateway.Delivery, err error) (a answer, ok bool) {
	switch {
	case err == nil && len(d.Frames) == 0:
		return answer{status: http.StatusOK, body: pollReply{Messages: []string{}, Status: http.StatusNoContent, Token: t.gw.WithKey(d.Token).String()}}, true
	case err == nil:
		msgs := make([]string, len(d.Frames))
		for i, f := range d.Frames {
			msgs[i] = string(f)
		}
		return answer{status: http.StatusOK, body: pollReply{Messages: msgs, Status: http.StatusOK, Token: t.gw.WithKey(d.Token).String()}}, true
	case errors.Is(err, gateway.ErrForeignSession):
		return t.foreignAnswer(tok), true
	case errors.Is(err, gateway.ErrNoSession):
		return answer{}, false
	default:
		t.cfg.Logger.Error("poll failed", "session", gateway.LogSession(tok.SessionID), "err", err)
		return t.unavailableAnswer(), true
	}
}

// asUser adds to ctx the user of the request's user token, if it has one
// that verifies, so that the gateway refuses a session of another user.
func (t *Transport) asUser(ctx context.Context, info gateway.ConnectInfo) context.Context {
	if id, ok := t.gw.Identify(ctx, info); ok {
		return gateway.AsUser(ctx, id.UserID)
	}
	return ctx
}

// foreign refuses a request for a session of another user than its user
// token's: nothing was read or applied.
func (t *Transport) foreign(c echo.Context, tok gateway.SessionToken) error {
	return reply(c, t.foreignAnswer(tok))
}

// foreignAnswer is foreign's answer.
func (t *Transport) foreignAnswer(tok gateway.SessionToken) answer {
	t.gw.Observer().Refused(transportName, "foreign_session")
	t.cfg.Logger.Warn("longpoll: request for another user's session refused", "session", gateway.LogSession(tok.SessionID))
	return answer{status: http.StatusForbidden, body: replyBody{Status: http.StatusForbidden, Error: gateway.ErrForeignSession.Error() + "; nothing was applied"}}
}

func (t *Transport) publish(c echo.Context) error {
	r := c.Request()
	obs := t.gw.Observer()
	tok, ok := gateway.ParseSessionToken(sessionToken(r))
	if !ok {
		obs.Refused(transportName, "no_session")
		return send(c, http.StatusOK, replyBody{Status: http.StatusGone, Error: "missing or malformed session token: GET /socket/longpoll first"})
	}
	if err := t.gw.VerifySession(tok); err != nil {
		obs.Refused(transportName, "bad_session_key")
		t.cfg.Logger.Warn("longpoll: session token refused", "session", gateway.LogSession(tok.SessionID), "err", err)
		return send(c, http.StatusForbidden, replyBody{Status: http.StatusForbidden, Error: "the session token is not valid (" + err.Error() + "); nothing was applied: use the token of your last poll answer"})
	}
	ctx := t.asUser(r.Context(), gateway.ConnectInfo{Params: r.URL.Query(), Token: userToken(r), Vsn: r.URL.Query().Get("vsn")})
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), r.Body, t.cfg.MaxBodyBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		obs.Refused(transportName, "body_too_large")
		return send(c, http.StatusRequestEntityTooLarge, replyBody{Status: http.StatusRequestEntityTooLarge, Error: fmt.Sprintf("body larger than %d bytes", t.cfg.MaxBodyBytes)})
	case err != nil:
		return send(c, http.StatusBadRequest, replyBody{Status: http.StatusBadRequest, Error: "reading body: " + err.Error()})
	}
	frames, err := gateway.SplitFrames(r.Header.Get("Content-Type"), body, false)
	if err != nil {
		obs.Refused(transportName, "malformed")
		return send(c, http.StatusBadRequest, replyBody{Status: http.StatusBadRequest, Error: err.Error()})
	}
	if len(frames) > t.cfg.MaxFrames {
		obs.Refused(transportName, "too_many_frames")
		return send(c, http.StatusRequestEntityTooLarge, replyBody{Status: http.StatusRequestEntityTooLarge, Error: fmt.Sprintf("batch of %d frames is over the limit of %d; nothing was applied", len(frames), t.cfg.MaxFrames)})
	}
	err = t.gw.Handle(ctx, tok.SessionID, frames)
	var batchErr *gateway.BatchError
	switch {
	case err == nil:
		obs.Received(transportName, len(frames))
		return send(c, http.StatusOK, replyBody{Status: http.StatusOK})
	case errors.Is(err, gateway.ErrNoSession):
		obs.Refused(transportName, "no_session")
		return send(c, http.StatusOK, replyBody{Status: http.StatusGone, Error: "the session expired or ended; nothing was applied: GET /socket/longpoll with a user token to start a new one"})
	case errors.Is(err, gateway.ErrForeignSession):
		return t.foreign(c, tok)
	case errors.Is(err, gateway.ErrRateLimited):
		obs.Refused(transportName, "rate_limited")
		c.Response().Header().Set("Retry-After", "1")
		return send(c, http.StatusTooManyRequests, replyBody{Status: http.StatusTooManyRequests, Error: err.Error()})
	case errors.Is(err, gateway.ErrPayloadTooLarge):
		obs.Refused(transportName, "payload_too_large")
		return send(c, http.StatusRequestEntityTooLarge, replyBody{Status: http.StatusRequestEntityTooLarge, Error: err.Error() + "; nothing was applied"})
	case errors.As(err, &batchErr):
		obs.Refused(transportName, "malformed")
		return send(c, http.StatusBadRequest, replyBody{Status: http.StatusBadRequest, Error: err.Error() + "; nothing was applied"})
	default:
		t.cfg.Logger.Error("publish failed", "session", gateway.LogSession(tok.SessionID), "err", err)
		return t.unavailable(c)
	}
}
