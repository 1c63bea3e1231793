// Package sse serves Phoenix Channels over Server-Sent Events downstream and
// HTTP POST upstream: Sluice's transport for networks whose proxies kill
// WebSocket upgrades. One GET opens a stream of events, one per channel
// message, each with an id that resumes the stream exactly (the browser's
// EventSource sends it back as Last-Event-ID when it reconnects, on any
// instance); the client POSTs the same frames a LongPoll client does.
//
// The stream is written on echo directly rather than through r3labs/sse's
// server: that library keeps an unbounded per-stream event log, rewrites
// event ids, lets one slow subscriber stall the others and sends no
// heartbeats (see the README). Here each stream is one goroutine reading the
// session's delivery cursor from the gateway, and the resume point is the
// event id itself, so nothing is kept per connection.
//
// Countermeasures for proxies (docs/proxies.md): `retry:` with
// jitter, heartbeat events well under the usual 60–100 s idle cuts, an
// optional padding comment for buffering proxies, headers that forbid
// caching, transformation and buffering, and a maximum stream lifetime after
// which the response ends cleanly so that buffering proxies flush and clients
// spread over instances.
package sse

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/handback"
	"github.com/sluicegw/sluice/internal/parkset"
)

// Config tunes the transport. Zero values take the defaults.
type Config struct {
	// Retry is the reconnection delay sent in `retry:`, jittered by ±25% per
	// stream so that clients cut together do not return together. Default 2s.
	Retry time.Duration
	// Heartbeat is how often an idle stream gets a heartbeat event. Default 15s.
	Heartbeat time.Duration
	// MaxLifetime ends a stream cleanly after this long (jittered by -10%),
	// with a 100 ms retry: the client resumes at once. Default 2m.
	MaxLifetime time.Duration
	// Padding is the size of a comment sent first, for proxies and old
	// browsers that hold small chunks; 0 sends none unless the client asks
	// with ?padding=1 (2 KiB). Default 0.
	Padding int
	// MaxBodyBytes bounds a POST body. Default 1 MiB.
	MaxBodyBytes int64
	// MaxFrames bounds the frames of one POST. Default 100.
	MaxFrames int
	// AllowCredentials answers CORS with the request's Origin and
	// Access-Control-Allow-Credentials: true, for EventSource's
	// withCredentials; otherwise Access-Control-Allow-Origin is *.
	AllowCredentials bool
	// MaxStreams bounds the open streams of this instance; a stream over it
	// is told to retry (and the balancer sends it elsewhere). 0: no limit.
	MaxStreams int
	// Origins, when set, refuses requests whose Origin it does not allow
	// (Phoenix's check_origin).
	Origins *gateway.OriginChecker
	// NoPark keeps a goroutine per stream instead of parking HTTP/1.1
	// streams outside net/http while they wait (see parked.go): for
	// comparison, or a middleware that must see the whole response.
	NoPark bool
	// WriteTimeout is how long a write may wait for a client that stopped
	// reading before its stream is dropped (a write gets between half of it
	// and all of it). Default 10s.
	WriteTimeout time.Duration
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
}

// Transport is the SSE HTTP handler.
type Transport struct {
	gw      *gateway.Gateway
	cfg     Config
	path    string
	streams atomic.Int64

	// parked holds the streams served without a goroutine (parked.go);
	// deliverers run their deliveries, nextShard spreads them over these.
	parked     parkset.Set[*parked]
	deliverers *deliverers
	nextShard  atomic.Uint32

	// afterSessionEvent, if set (by tests), runs once a stream's session
	// event is flushed, before the stream goes on.
	afterSessionEvent func()
}

// New returns a Transport serving gw.
func New(gw *gateway.Gateway, cfg Config) *Transport {
	if cfg.Retry <= 0 {
		cfg.Retry = 2 * time.Second
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 15 * time.Second
	}
	if cfg.MaxLifetime <= 0 {
		cfg.MaxLifetime = 2 * time.Minute
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
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
	t := &Transport{gw: gw, cfg: cfg, deliverers: newDeliverers(shardsPerCPU * runtime.GOMAXPROCS(0))}
	gw.OnDrain(t.finishParked)
	return t
}

// Register mounts the transport at path (Sluice's is "/socket/sse").
func (t *Transport) Register(e *echo.Echo, path string) {
	t.path = path
	e.GET(path, t.stream)
	e.POST(path, t.publish)
	e.OPTIONS(path, t.preflight)
}

// cors grants the request's Origin access to the answer: none at all to an
// Origin that Config.Origins refuses (its page may neither read the answer
// nor send credentials), the Origin echoed with credentials when
// AllowCredentials is set, else "*".
func (t *Transport) cors(c echo.Context) {
	h := c.Response().Header()
	origin := c.Request().Header.Get("Origin")
	if !t.cfg.Origins.Allowed(origin) {
		return
	}
	if t.cfg.AllowCredentials && origin != "" {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
	} else {
		h.Set("Access-Control-Allow-Origin", "*")
	}
}

func (t *Transport) preflight(c echo.Context) error {
	if origin := c.Request().Header.Get("Origin"); !t.cfg.Origins.Allowed(origin) {
		t.gw.Observer().Refused(transportName, "origin")
		return fail(c, http.StatusForbidden, "origin "+origin+" is not allowed")
	}
	t.cors(c)
	h := c.Response().Header()
	h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
	h.Set("Access-Control-Allow-Headers", c.Request().Header.Get("Access-Control-Request-Headers"))
	// Every POST with a JSON content type is preflighted: cache the answer.
	h.Set("Access-Control-Max-Age", "3600")
	return c.NoContent(http.StatusNoContent)
}

// fail answers a request that cannot be served with a JSON error. An
// EventSource gives up for good on a non-200 answer, which is right for
// these: bad credentials and bad input do not get better by retrying.
func fail(c echo.Context, status int, msg string) error {
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(status, map[string]any{"status": status, "error": msg})
}

// unavailable answers a stream this instance cannot serve now (the store
// does not answer, it is draining, it holds its maximum of streams), saying
// why. An EventSource
// never retries after a non-200 answer (docs/proxies.md), so this is a 200
// stream that says why and ends at once with a short retry: the browser
// comes back, with its Last-Event-ID, and resumes exactly once the store
// answers again.
func (t *Transport) unavailable(c echo.Context, reason string) error {
	w := c.Response()
	setStreamHeaders(w.Header(), c.Request())
	w.WriteHeader(http.StatusOK)
	retry := jitter(t.cfg.Retry/2, 0.25)
	data, _ := json.Marshal(map[string]string{"reason": reason})
	fmt.Fprintf(w, "retry: %d\n\nevent: unavailable\ndata: %s\n\n", retry.Milliseconds(), data)
	return nil
}

// Reasons an unavailable event gives.
const (
	reasonStore    = "the shared store did not answer; retrying"
	reasonDraining = "this instance is shutting down; retrying elsewhere"
	reasonFull     = "this instance holds its maximum of streams; retrying elsewhere"
)

// setStreamHeaders sets the headers of an event stream.
func setStreamHeaders(h http.Header, r *http.Request) {
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache, no-store, no-transform")
	h.Set("X-Accel-Buffering", "no")
	if r.ProtoMajor == 1 {
		// A stream is its connection's last answer: when it ends, the
		// server closes the connection (a parked stream's was hijacked).
		// Saying keep-alive let an HTTP/1.1 client queue its next request
		// on it and lose that request to the close. (Illegal in HTTP/2.)
		h.Set("Connection", "close")
	}
}

// lastEventID is the client's resume point: the Last-Event-ID header an
// EventSource sends when it reconnects, or a lastEventId (or last_event_id)
// query parameter for clients that cannot set headers.
func lastEventID(r *http.Request) string {
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		return v
	}
	q := r.URL.Query()
	if v := q.Get("lastEventId"); v != "" {
		return v
	}
	return q.Get("last_event_id")
}

// SessionHeader carries an SSE session's credential on its POSTs.
const SessionHeader = "X-Sluice-Session"

// userToken finds the user token: X-Phoenix-AuthToken, else the `token`
// query parameter (EventSource cannot set headers).
func userToken(r *http.Request) string {
	if v := r.Header.Get("X-Phoenix-AuthToken"); v != "" {
		return v
	}
	return r.URL.Query().Get("token")
}

func (t *Transport) stream(c echo.Context) error {
	r := c.Request()
	t.cors(c)
	q := r.URL.Query()
	info := gateway.ConnectInfo{Params: q, Token: userToken(r), Vsn: q.Get("vsn")}
	ctx := r.Context()

	obs := t.gw.Observer()
	if origin := r.Header.Get("Origin"); !t.cfg.Origins.Allowed(origin) {
		obs.Refused(transportName, "origin")
		return fail(c, http.StatusForbidden, "origin "+origin+" is not allowed")
	}
	if draining(t.gw) {
		obs.Refused(transportName, "draining")
		return t.unavailable(c, reasonDraining)
	}
	if n := t.streams.Add(1); t.cfg.MaxStreams > 0 && n > int64(t.cfg.MaxStreams) {
		t.streams.Add(-1)
		obs.Refused(transportName, "too_many_streams")
		return t.unavailable(c, reasonFull)
	}
	// A parked stream (parked.go) releases its count when it ends.
	isParked := false
	defer func() {
		if !isParked {
			t.streams.Add(-1)
		}
	}()
	var tok gateway.SessionToken
	// opened is the session ConnectAndHandle made, which the stream's
	// subscription starts from without reading it back; zero on a resume.
	var opened gateway.Opened
	resumed := false
	if id := lastEventID(r); id != "" {
		prev, ok := gateway.ParseSessionToken(id)
		if !ok {
			obs.Refused(transportName, "malformed")
			return fail(c, http.StatusBadRequest, "malformed Last-Event-ID: it must be an event id this server sent")
		}
		switch err := t.gw.Resume(ctx, info, prev); {
		case err == nil:
			// Event ids are public: never echo a key a client sent in one.
			tok, resumed = prev, true
			tok.Key = ""
			obs.Resumed(transportName)
		case errors.Is(err, gateway.ErrForeignSession):
			obs.Refused(transportName, "foreign_session")
			t.cfg.Logger.Warn("sse: resume of another user's session refused", "session", gateway.LogSession(prev.SessionID))
			return fail(c, http.StatusForbidden, err.Error())
		case errors.Is(err, gateway.ErrUnauthorized), errors.Is(err, gateway.ErrUnsupportedVsn):
			obs.Refused(transportName, "unauthorized")
			return fail(c, http.StatusForbidden, err.Error())
		case errors.Is(err, gateway.ErrNoSession):
			// Expired or ended: start a new one below; its session event
			// tells the client to rejoin its channels.
		default:
			t.cfg.Logger.Error("sse: resume failed", "session", gateway.LogSession(prev.SessionID), "err", err)
			obs.Refused(transportName, "unavailable")
			return t.unavailable(c, reasonStore)
		}
	}
	if !resumed {
		// ?join= is checked before the session is made: a session refused
		// its joins would count against --max-sessions-per-user, unused,
		// until it expired.
		joins, err := joinFrames(info.Vsn, q["join"], t.cfg.MaxFrames)
		if err != nil {
			obs.Refused(transportName, "malformed")
			return fail(c, http.StatusBadRequest, err.Error())
		}
		// The joins are applied to the new session as it is created (see
		// ConnectAndHandle): fewer store round trips than Connect, Handle.
		opened, err = t.gw.ConnectAndHandle(ctx, info, joins)
		tok = opened.Token
		var batchErr *gateway.BatchError
		switch {
		case errors.Is(err, gateway.ErrTooManySessions):
			obs.Refused(transportName, "too_many_sessions")
			return fail(c, http.StatusForbidden, err.Error())
		case errors.Is(err, gateway.ErrUnauthorized), errors.Is(err, gateway.ErrUnsupportedVsn):
			t.cfg.Logger.Info("sse: connect refused", "err", err)
			obs.Refused(transportName, "unauthorized")
			return fail(c, http.StatusForbidden, err.Error())
		case errors.As(err, &batchErr):
			// joinFrames checks what Handle refuses: kept as a guard.
			obs.Refused(transportName, "malformed")
			return fail(c, http.StatusBadRequest, err.Error())
		case err != nil:
			t.cfg.Logger.Error("sse: connect failed", "joins", len(joins), "err", err)
			obs.Refused(transportName, "unavailable")
			return t.unavailable(c, reasonStore)
		}
	}

	// The subscription listens before the session event hands the session
	// out: from then on its client may POST (a join), and a subscription
	// that adopts the session as ConnectAndHandle saved it (SubscribeOpened)
	// must hear of any change made after that, or it would not read the
	// joined channels (a presence_diff, broadcasts) until its session
	// changed again.
	parkable := !t.cfg.NoPark && r.ProtoMajor == 1
	opened.Token = tok
	var p *parked
	var sub *gateway.Subscription
	var err error
	if parkable {
		p = t.newParked(tok)
		subCtx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		sub, err = t.gw.SubscribeOpened(subCtx, opened, t.cfg.Heartbeat, p.wake)
		cancel()
	} else {
		sub, err = t.gw.SubscribeOpened(ctx, opened, 0, nil)
	}
	if sub != nil {
		defer func() {
			if !isParked {
				sub.Close()
			}
		}()
	}

	w := c.Response()
	setStreamHeaders(w.Header(), r)
	if parkable {
		// A parked stream's connection is closed when the stream ends
		// (net/http cannot take it back): say so, or the client reuses
		// it for its next request and that request fails.
		w.Header().Set("Connection", "close")
	}
	w.WriteHeader(http.StatusOK)
	sw := &streamWriter{w: w, rc: http.NewResponseController(w), timeout: t.cfg.WriteTimeout}
	buf := &sw.buf
	obs.Open(transportName, 1)
	defer func() {
		if !isParked {
			obs.Open(transportName, -1)
		}
	}()

	padding := t.cfg.Padding
	if padding == 0 && q.Get("padding") == "1" {
		padding = 2048
	}
	if padding > 0 {
		buf.WriteByte(':')
		buf.Write(bytes.Repeat([]byte{' '}, padding))
		buf.WriteString("\n\n")
	}
	retry := jitter(t.cfg.Retry, 0.25)
	fmt.Fprintf(buf, "retry: %d\n\n", retry.Milliseconds())
	// The credential travels only in this stream's body and, from the
	// client, in the X-Sluice-Session header of its POSTs: never in a URL,
	// which proxies log.
	hello, _ := json.Marshal(map[string]any{"session": tok.SessionID, "credential": t.gw.SessionCredential(tok.SessionID), "post": t.path, "resumed": resumed})
	writeEvent(buf, "session", []byte(tok.String()), hello)
	if err != nil {
		t.endStream(sw, tok, err)
		return nil
	}
	if err := sw.flush(); err != nil {
		return nil
	}
	if t.afterSessionEvent != nil {
		t.afterSessionEvent()
	}

	lifetime := jitter(t.cfg.MaxLifetime, -0.1)
	if parkable {
		if isParked = t.park(w, p, sub, lifetime); isParked {
			// echo pools its contexts: this one must not keep net/http's
			// response and the connection's buffers until reused.
			c.Response().Writer = handback.HijackedWriter{}
			return nil
		}
		// A writer that cannot be hijacked: this goroutine serves the
		// stream, with a subscription of its own, which reads the session
		// after it listens (the session is handed out already).
		sub.Close()
		if sub, err = t.gw.SubscribeOpened(ctx, gateway.Opened{Token: tok}, 0, nil); err != nil {
			sub = nil
			t.endStream(sw, tok, err)
			return nil
		}
	}
	// Not parked (HTTP/2, NoPark, or a writer that cannot be hijacked):
	// this goroutine serves the stream.
	deadline := time.Now().Add(lifetime)
	// While the stores fail, the stream waits and retries, as a parked
	// one does (see parked.storeFailed).
	var failing gateway.StoreRetry
	lastWrite := time.Now()
	for {
		wait := min(t.cfg.Heartbeat, time.Until(deadline))
		if wait <= 0 || draining(t.gw) {
			// End cleanly, with a short retry so the client resumes from its
			// last id at once (the next stream sets the usual retry again).
			buf.WriteString("retry: 100\n\n")
			_ = sw.flush()
			return nil
		}
		d, err := sub.Next(ctx, wait)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil // the client went away
		case err != nil:
			first := !failing.Failing()
			backoff, retry := failing.Failed(t.gw, err, time.Now())
			if !retry {
				t.endStream(sw, tok, err)
				return nil
			}
			if first {
				t.cfg.Logger.Debug("sse: store call failed; the stream waits and retries", "session", gateway.LogSession(tok.SessionID), "err", err)
			}
			pause := time.NewTimer(min(backoff, wait))
			select {
			case <-ctx.Done():
				pause.Stop()
				return nil
			case <-t.gw.Draining():
				pause.Stop()
			case <-pause.C:
			}
			if time.Since(lastWrite) < t.cfg.Heartbeat {
				continue
			}
			// Silent for a heartbeat: say the stream is alive.
			d = &gateway.Delivery{}
		default:
			failing.Answered(time.Now())
		}
		if len(d.Frames) == 0 {
			buf.WriteString("event: heartbeat\ndata: ")
			buf.WriteString(strconv.FormatInt(time.Now().UnixMilli(), 10))
			buf.WriteString("\n\n")
		}
		for i, f := range d.Frames {
			sw.id = d.Tokens[i].AppendText(sw.id[:0])
			writeEvent(buf, "", sw.id, f)
		}
		if err := sw.flush(); err != nil {
			return nil
		}
		lastWrite = time.Now()
		d.Observe(obs, transportName)
	}
}

// endStream ends a stream whose session could not be read: session_gone when
// it ended (the client starts a new one and rejoins), else unavailable (the
// client retries after retry:, from its last id).
func (t *Transport) endStream(sw *streamWriter, tok gateway.SessionToken, err error) {
	buf := &sw.buf
	if errors.Is(err, gateway.ErrNoSession) {
		msg, _ := json.Marshal(map[string]string{"reason": "session gone", "session": tok.SessionID})
		writeEvent(buf, "session_gone", nil, msg)
	} else {
		t.cfg.Logger.Error("sse: poll failed", "session", gateway.LogSession(tok.SessionID), "err", err)
		t.gw.Observer().Refused(transportName, "unavailable")
		buf.WriteString("event: unavailable\ndata: {\"reason\":\"" + reasonStore + "\"}\n\n")
	}
	_ = sw.flush()
}

// draining reports whether the instance is shutting down: streams end with
// a short retry so that clients resume on another instance.
func draining(gw *gateway.Gateway) bool {
	select {
	case <-gw.Draining():
		return true
	default:
		return false
	}
}

// transportName labels this transport's metrics.
const transportName = "sse"

// streamWriter writes a stream: what its buffer holds goes as one write and
// one flush, so the events of one delivery cost one syscall.
type streamWriter struct {
	w   io.Writer
	rc  *http.ResponseController
	buf bytes.Buffer
	// id holds the event id being written, reused between events.
	id []byte
	// deadline is the write deadline set on the connection. Moving it is a
	// timer update; it is moved only once it is half spent, not per write.
	deadline time.Time
	// timeout is Config.WriteTimeout.
	timeout time.Duration
}

// flush writes and flushes what the buffer holds.
func (sw *streamWriter) flush() error {
	if now := time.Now(); sw.deadline.Sub(now) < sw.timeout/2 {
		sw.deadline = now.Add(sw.timeout)
		_ = sw.rc.SetWriteDeadline(sw.deadline)
	}
	_, err := sw.w.Write(sw.buf.Bytes())
	sw.buf.Reset()
	if err == nil {
		err = sw.rc.Flush()
	}
	return err
}

// writeEvent appends one SSE event. Frames are single-line JSON; any line
// breaks are split into data lines as the format requires.
func writeEvent(buf *bytes.Buffer, event string, id, data []byte) {
	if event != "" {
		buf.WriteString("event: ")
		buf.WriteString(event)
		buf.WriteByte('\n')
	}
	if len(id) > 0 {
		buf.WriteString("id: ")
		buf.Write(id)
		buf.WriteByte('\n')
	}
	for {
		line, rest, more := bytes.Cut(data, []byte("\n"))
		buf.WriteString("data: ")
		buf.Write(bytes.TrimSuffix(line, []byte("\r")))
		buf.WriteByte('\n')
		if !more {
			break
		}
		data = rest
	}
	buf.WriteByte('\n')
}

// jitter returns d changed by a random fraction up to frac (a negative frac
// only shortens).
func jitter(d time.Duration, frac float64) time.Duration {
	if frac < 0 {
		return d - time.Duration(rand.Float64()*-frac*float64(d))
	}
	return d + time.Duration((rand.Float64()*2-1)*frac*float64(d))
}

// joinFrames makes the join frames of the topics named by ?join= (several
// allowed, or comma-separated), for curl users: their replies come down the
// stream with join_ref "join:<n>". It refuses what Handle would (a topic over
// gateway.MaxFieldBytes, more than maxFrames topics) before any session is
// made. With a vsn no serializer speaks it returns nothing: Connect refuses it.
func joinFrames(vsn string, params []string, maxFrames int) ([][]byte, error) {
	ser, err := gateway.SerializerFor(vsn)
	if err != nil {
		return nil, nil
	}
	var frames [][]byte
	n := 0
	for _, p := range params {
		for _, topic := range strings.Split(p, ",") {
			if topic = strings.TrimSpace(topic); topic == "" {
				continue
			}
			n++
			ref := "join:" + strconv.Itoa(n)
			f, err := ser.Encode(&gateway.Message{JoinRef: &ref, Ref: &ref, Topic: topic, Event: gateway.EventJoin})
			if err == nil {
				_, err = ser.Decode(f) // the checks Handle makes of every frame
			}
			if err != nil {
				return nil, fmt.Errorf("join %d of ?join=: %w", n, err)
			}
			frames = append(frames, f)
		}
	}
	if len(frames) > maxFrames {
		return nil, fmt.Errorf("too many topics in join: %d, at most %d", len(frames), maxFrames)
	}
	return frames, nil
}

func (t *Transport) publish(c echo.Context) error {
	t.cors(c)
	r := c.Request()
	obs := t.gw.Observer()
	if origin := r.Header.Get("Origin"); !t.cfg.Origins.Allowed(origin) {
		obs.Refused(transportName, "origin")
		return fail(c, http.StatusForbidden, "origin "+origin+" is not allowed")
	}
	cred := r.Header.Get(SessionHeader)
	if cred == "" {
		obs.Refused(transportName, "no_session")
		msg := "missing " + SessionHeader + " header: send the credential of the stream's session event in it"
		if r.URL.Query().Get("session") != "" {
			// A session id is public (it is in every event id): it proves nothing.
			msg = "a session id in the URL is not enough: send the credential of the stream's session event in the " + SessionHeader + " header"
		}
		return fail(c, http.StatusForbidden, msg)
	}
	tok, ok := gateway.ParseSessionCredential(cred)
	if !ok {
		obs.Refused(transportName, "malformed")
		return fail(c, http.StatusBadRequest, "malformed "+SessionHeader+" header: it must be the credential of the stream's session event (64 hex characters)")
	}
	if err := t.gw.VerifySession(tok); err != nil {
		obs.Refused(transportName, "bad_session_key")
		t.cfg.Logger.Warn("sse: session credential refused", "session", gateway.LogSession(tok.SessionID), "err", err)
		return fail(c, http.StatusForbidden, err.Error()+"; nothing was applied")
	}
	sid := tok.SessionID
	ctx := r.Context()
	if id, ok := t.gw.Identify(ctx, gateway.ConnectInfo{Params: r.URL.Query(), Token: userToken(r)}); ok {
		ctx = gateway.AsUser(ctx, id.UserID)
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), r.Body, t.cfg.MaxBodyBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		obs.Refused(transportName, "body_too_large")
		return fail(c, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", t.cfg.MaxBodyBytes))
	case err != nil:
		return fail(c, http.StatusBadRequest, "reading body: "+err.Error())
	}
	frames, err := gateway.SplitFrames(r.Header.Get("Content-Type"), body, true)
	if err != nil {
		obs.Refused(transportName, "malformed")
		return fail(c, http.StatusBadRequest, err.Error())
	}
	if len(frames) > t.cfg.MaxFrames {
		obs.Refused(transportName, "too_many_frames")
		return fail(c, http.StatusRequestEntityTooLarge, fmt.Sprintf("batch of %d frames is over the limit of %d; nothing was applied", len(frames), t.cfg.MaxFrames))
	}
	err = t.gw.Handle(ctx, sid, frames)
	var batchErr *gateway.BatchError
	switch {
	case err == nil:
		obs.Received(transportName, len(frames))
		return c.JSON(http.StatusOK, map[string]int{"status": http.StatusOK})
	case errors.Is(err, gateway.ErrNoSession):
		obs.Refused(transportName, "no_session")
		return fail(c, http.StatusGone, "the session expired or ended; nothing was applied: open a new stream (GET /socket/sse?vsn=2.0.0&token=<user token>)")
	case errors.Is(err, gateway.ErrForeignSession):
		obs.Refused(transportName, "foreign_session")
		t.cfg.Logger.Warn("sse: POST for another user's session refused", "session", gateway.LogSession(sid))
		return fail(c, http.StatusForbidden, err.Error()+"; nothing was applied")
	case errors.Is(err, gateway.ErrRateLimited):
		obs.Refused(transportName, "rate_limited")
		c.Response().Header().Set("Retry-After", "1")
		return fail(c, http.StatusTooManyRequests, err.Error())
	case errors.Is(err, gateway.ErrPayloadTooLarge):
		obs.Refused(transportName, "payload_too_large")
		return fail(c, http.StatusRequestEntityTooLarge, err.Error()+"; nothing was applied")
	case errors.As(err, &batchErr):
		obs.Refused(transportName, "malformed")
		return fail(c, http.StatusBadRequest, err.Error()+"; nothing was applied")
	default:
		t.cfg.Logger.Error("sse: publish failed", "session", gateway.LogSession(sid), "err", err)
		obs.Refused(transportName, "unavailable")
		c.Response().Header().Set("Retry-After", "1")
		return fail(c, http.StatusServiceUnavailable, "temporarily unavailable: the shared store did not answer; retry")
	}
}
