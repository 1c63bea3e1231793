// Package websocket serves Phoenix's WebSocket transport, so that phoenix.js
// with its defaults (`new Socket("/socket", {params: {token}})`, which opens
// /socket/websocket) talks to Sluice as it would to Phoenix, in the same
// rooms as the SSE and LongPoll clients.
//
// The transport is thin: the gateway does the channel work. A connect is
// gateway.Connect (refused with an HTTP 403 before the upgrade, as Phoenix
// refuses); each text message is one frame for gateway.Handle; what the
// session's Subscription delivers is written as one text message per frame.
// Unlike the HTTP transports, the session lives exactly as long as its
// connection: the connection is the credential, and phoenix.js has no way
// to resume a session over a new WebSocket, so when the connection ends the
// session ends at once (its presences leave).
//
// Framing is github.com/gorilla/websocket's. An idle connection holds no
// goroutine, no read buffer and no write buffer: on Linux one goroutine per
// process waits (epoll) for any idle connection to become readable (which
// also notices a client leaving) and starts a short read turn for it, which
// borrows a 512-byte read buffer while it reads; elsewhere each connection
// keeps one goroutine with a small stack waiting for that. What stays is
// gorilla's connection, a timer, and the subscription. Reading and applying
// frames, and deliveries, run as short tasks.
package websocket

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	gws "github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/idlepoll"
)

// Config tunes the transport. Zero values take the defaults.
type Config struct {
	// PingInterval is how often the server checks a connection's session
	// (which keeps it alive in the store and finds what a lost wake-up from
	// another instance hid), and pings a client silent for twice as long:
	// phoenix.js, whose heartbeat comes every 30 s, is never pinged; a
	// client that sends nothing must answer pings. Default 20s.
	PingInterval time.Duration
	// IdleTimeout closes a connection from which nothing (no message, no
	// pong) arrived for this long, as Phoenix's WebSocket `timeout`: a peer
	// that died without closing is noticed by its missing heartbeats or
	// pongs. It must be longer than twice PingInterval. Default 60s.
	IdleTimeout time.Duration
	// WriteTimeout bounds a write; a client that stops reading is dropped
	// once its buffers are full for this long. Default 10s.
	WriteTimeout time.Duration
	// MaxMessageBytes bounds an incoming message; a larger one closes the
	// connection with 1009. Default 1 MiB.
	MaxMessageBytes int64
	// MaxSockets bounds the open connections of this instance; an upgrade
	// over it is answered 503 (phoenix.js retries, and the balancer sends
	// it elsewhere). 0: no limit.
	MaxSockets int
	// Origins, when set, refuses upgrades whose Origin it does not allow
	// with an HTTP 403, as Phoenix's check_origin does.
	Origins *gateway.OriginChecker
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
}

// Transport is the WebSocket HTTP handler.
type Transport struct {
	gw       *gateway.Gateway
	cfg      Config
	upgrader gws.Upgrader
	// open counts the connections being set up or open, for MaxSockets.
	open atomic.Int64

	mu      sync.Mutex
	sockets map[*socket]struct{}
	// draining is set once the gateway drains: sockets registered later
	// close at once.
	draining bool
}

// writeBuffers lends write buffers to connections only while they write.
var writeBuffers = &sync.Pool{}

// New returns a Transport serving gw.
func New(gw *gateway.Gateway, cfg Config) *Transport {
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 20 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.IdleTimeout <= 2*cfg.PingInterval {
		cfg.IdleTimeout = 3 * cfg.PingInterval
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Transport{gw: gw, cfg: cfg, sockets: make(map[*socket]struct{})}
	t.upgrader = gws.Upgrader{
		HandshakeTimeout: cfg.WriteTimeout,
		// The read buffer is ours (see hijacker): 512 bytes instead of
		// net/http's 4 KiB (frames are small; a larger one is read in several
		// steps); and a write buffer only while writing.
		WriteBufferPool: writeBuffers,
		// phoenix.js offers "phoenix" (next to its auth token entry) and
		// needs it echoed; the token entry is never echoed.
		Subprotocols: []string{"phoenix"},
		// Origins were checked before the upgrade, with Phoenix's semantics.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			w.Header().Set("Sec-WebSocket-Version", "13")
			writeError(w, status, reason.Error())
		},
	}
	gw.OnDrain(t.drain)
	return t
}

// Register mounts the transport at path (Phoenix's is "/socket/websocket").
func (t *Transport) Register(e *echo.Echo, path string) {
	e.GET(path, t.serve)
}

// IdlePollerLoop is the function of the goroutine that waits for idle
// connections to become readable (on Linux, internal/idlepoll's, which
// the LongPoll transport shares). It is started at first use and lives as
// long as the process, as the runtime's own poller: leak checks
// (goleak.IgnoreAnyFunction) may ignore it.
const IdlePollerLoop = idlepoll.Loop

// transportName labels this transport's metrics.
const transportName = "websocket"

// Close codes. phoenix.js 1.8.16 reconnects after any close it did not ask
// for, but older releases do not reconnect after 1000, so the
// server never ends a connection with 1000.
const (
	// closeGoingAway: the session was ended (/api/disconnect), as Phoenix
	// closes on a "disconnect" broadcast (1.8.8+).
	closeGoingAway = gws.CloseGoingAway // 1001
	// closeRestart: the instance drains, as Phoenix closes on shutdown;
	// phoenix.js reconnects, through the balancer, elsewhere.
	closeRestart = gws.CloseServiceRestart // 1012
	// closeUnavailable: the shared store did not answer.
	closeUnavailable = gws.CloseInternalServerErr // 1011
	// closeBadData: a frame that is not valid JSON of the session's
	// serializer, or not UTF-8.
	closeBadData = gws.CloseInvalidFramePayloadData // 1007
	// closeUnsupported: a binary frame.
	closeUnsupported = gws.CloseUnsupportedData // 1003
	// closeTooBig: a payload over the limit.
	closeTooBig = gws.CloseMessageTooBig // 1009
)

// Reasons sent in close frames (at most 123 bytes).
const (
	reasonDraining = "this instance is shutting down; reconnect"
	reasonGone     = "session ended; reconnect"
	reasonStore    = "the shared store did not answer; reconnect"
	reasonBinary   = "binary frames are not supported; send JSON text frames"
	reasonUTF8     = "text frame is not valid UTF-8"
)

// authTokenPrefix marks phoenix.js's auth token subprotocol entry:
// "base64url.bearer.phx." and the token in base64 without padding.
const authTokenPrefix = "base64url.bearer.phx."

// writeError answers a request that is not upgraded with a JSON error.
func writeError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]any{"status": status, "error": msg})
	_, _ = w.Write(b)
}

// userToken finds the user token: X-Phoenix-AuthToken, else phoenix.js's
// auth token subprotocol entry (its authToken option), else the `token`
// query parameter (its params).
func userToken(r *http.Request) (string, error) {
	if v := r.Header.Get("X-Phoenix-AuthToken"); v != "" {
		return v, nil
	}
	for _, p := range gws.Subprotocols(r) {
		enc, ok := strings.CutPrefix(p, authTokenPrefix)
		if !ok {
			continue
		}
		// phoenix.js uses btoa (standard alphabet) without padding, despite
		// the prefix; take the URL alphabet and padding too.
		enc = strings.TrimRight(enc, "=")
		b, err := base64.RawStdEncoding.DecodeString(enc)
		if err != nil {
			if b, err = base64.RawURLEncoding.DecodeString(enc); err != nil {
				return "", errors.New("the auth token subprotocol entry is not base64")
			}
		}
		return string(b), nil
	}
	return r.URL.Query().Get("token"), nil
}

func (t *Transport) serve(c echo.Context) error {
	r := c.Request()
	w := c.Response()
	obs := t.gw.Observer()
	if origin := r.Header.Get("Origin"); !t.cfg.Origins.Allowed(origin) {
		obs.Refused(transportName, "origin")
		writeError(w, http.StatusForbidden, "origin "+origin+" is not allowed")
		return nil
	}
	if !gws.IsWebSocketUpgrade(r) || r.Header.Get("Sec-WebSocket-Key") == "" {
		obs.Refused(transportName, "malformed")
		writeError(w, http.StatusBadRequest, "this endpoint speaks WebSocket (GET with Upgrade: websocket); HTTP clients use /socket/longpoll or /socket/sse")
		return nil
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		obs.Refused(transportName, "malformed")
		w.Header().Set("Sec-WebSocket-Version", "13")
		writeError(w, http.StatusBadRequest, "unsupported Sec-WebSocket-Version: this server speaks 13")
		return nil
	}
	if n := t.open.Add(1); t.cfg.MaxSockets > 0 && n > int64(t.cfg.MaxSockets) {
		t.open.Add(-1)
		obs.Refused(transportName, "too_many_sockets")
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "this instance holds its maximum of WebSocket connections; retry (elsewhere)")
		return nil
	}
	handedOver := false
	defer func() {
		if !handedOver {
			t.open.Add(-1)
		}
	}()
	q := r.URL.Query()
	token, err := userToken(r)
	if err != nil {
		obs.Refused(transportName, "unauthorized")
		writeError(w, http.StatusForbidden, err.Error())
		return nil
	}
	// ConnectAndHandle with no frames: the socket's subscription starts
	// from the session it made (SubscribeOpened, one store round trip less).
	opened, err := t.gw.ConnectAndHandle(r.Context(), gateway.ConnectInfo{Params: q, Token: token, Vsn: q.Get("vsn")}, nil)
	tok := opened.Token
	switch {
	case errors.Is(err, gateway.ErrDraining):
		obs.Refused(transportName, "draining")
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return nil
	case errors.Is(err, gateway.ErrTooManySessions):
		obs.Refused(transportName, "too_many_sessions")
		writeError(w, http.StatusForbidden, err.Error())
		return nil
	case errors.Is(err, gateway.ErrUnauthorized), errors.Is(err, gateway.ErrUnsupportedVsn):
		t.cfg.Logger.Info("websocket: connect refused", "err", err)
		obs.Refused(transportName, "unauthorized")
		writeError(w, http.StatusForbidden, err.Error())
		return nil
	case err != nil:
		t.cfg.Logger.Error("websocket: connect failed", "err", err)
		obs.Refused(transportName, "unavailable")
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "temporarily unavailable: the shared store did not answer; retry")
		return nil
	}
	// The upgrade answer carries the headers set so far (X-Request-ID).
	hj := &hijacker{ResponseWriter: w}
	conn, err := t.upgrader.Upgrade(hj, r, w.Header())
	if err != nil {
		// The upgrader answered (or the connection is gone): the session
		// never had a connection.
		t.cfg.Logger.Info("websocket: upgrade failed", "err", err)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), storeTimeout)
		_, _ = t.gw.EndSession(ctx, tok.SessionID, "closed")
		cancel()
		return nil
	}
	// For the access log: the 101 went out on the hijacked connection.
	w.Status, w.Committed = http.StatusSwitchingProtocols, true
	handedOver = true
	obs.Open(transportName, 1)
	s := &socket{t: t, conn: conn, tok: tok, br: hj.br, out: hj.out}
	s.lastRead.Store(time.Now().UnixNano())
	if hj.out != nil {
		s.readable = readableWaiter(hj.out.Conn, hj.br)
		if s.raw = rawConnOf(hj.out.Conn); s.readable != nil && s.raw != nil {
			s.poller = idlepoll.Shared(t.cfg.Logger)
		}
	}
	if s.readable != nil && s.br.Buffered() == 0 {
		// Idle, the connection holds no read buffer: the one the upgrade
		// needed goes (readFrames borrows one while it reads).
		*s.br = bufio.Reader{}
	}
	s.setUpReads()
	s.start(opened)
	// The handler returns: net/http's request, buffers and goroutine go.
	// With the idle poller, a read turn serves the connection while
	// something arrives, and nothing while it is idle; else the socket's
	// goroutine does.
	if s.poller != nil {
		s.poller.Add(&s.wait, s.unpark)
		go s.readTurn()
	} else {
		go s.run()
	}
	return nil
}

// drain closes every socket so that phoenix.js reconnects elsewhere.
func (t *Transport) drain() {
	t.mu.Lock()
	t.draining = true
	all := make([]*socket, 0, len(t.sockets))
	for s := range t.sockets {
		all = append(all, s)
	}
	t.mu.Unlock()
	for _, s := range all {
		s.mu.Lock()
		s.closeLocked(closeRestart, reasonDraining)
		s.mu.Unlock()
	}
}

// Close closes every open connection as a drain does (for tests and
// embedders; a server's Gateway.Drain does it too).
func (t *Transport) Close() { t.drain() }

// storeTimeout bounds a task's calls to the stores.
const storeTimeout = 10 * time.Second

// closeGrace is how long a closing connection waits for the client's close
// frame before its TCP connection is closed: closing at once could reset
// the connection before the client read why it was closed.
const closeGrace = 2 * time.Second

// rateLimitWait is how long a frame over the session's rate waits before it
// is tried again: the connection is read no faster than the rate allows.
const rateLimitWait = 100 * time.Millisecond

// socket is one WebSocket connection and its session.
type socket struct {
	t    *Transport
	conn *gws.Conn
	tok  gateway.SessionToken

	mu sync.Mutex // held by the running task: one writer at a time
	// sub is nil until run subscribed.
	sub *gateway.Subscription
	// closing: no more writes; a close frame went out (or the connection
	// broke) and the reader is finishing.
	closing bool
	// done is set with closing, for the reader (an atomic, not a channel: a
	// channel would be 96 bytes more per idle connection).
	done atomic.Bool
	// queued: a delivery task is scheduled and has not started.
	queued atomic.Bool
	beat   *time.Timer
	// deadline is the connection's write deadline, moved once half spent.
	deadline time.Time
	// lastRead is when a frame last arrived (unix nanoseconds).
	lastRead atomic.Int64
	// br is the connection's buffered reader, and readable waits until it
	// or the connection has something to read (nil: not possible here).
	// With readable, br holds a buffer only while frames are read (see
	// borrowReadBuffer).
	br       *bufio.Reader
	readable func() error
	// lent is the pooled reader whose buffer br uses while reading.
	lent *bufio.Reader
	// poller, when set, holds the connection while it is idle (see
	// idlepoll): raw is its connection, turn says who has it (turnReading,
	// turnParked, turnDone), wait is its registration.
	poller *idlepoll.Poller
	raw    syscall.RawConn
	turn   atomic.Int32
	wait   idlepoll.Waiter
	// reading waits for readFrames' goroutine, readErr is what it returned.
	reading sync.WaitGroup
	readErr error
	// out is the connection gorilla writes to (nil if the upgrader kept
	// net/http's buffers).
	out *outConn
	// While the stores fail, the socket waits and retries (see
	// gateway.StoreRetry): retryAt is when it tries next (wake-ups before
	// then coalesce into that try), retry the timer that makes the try.
	failing gateway.StoreRetry
	retryAt time.Time
	retry   *time.Timer
}

// start subscribes to the session opened made and delivers what arrived
// since the connect.
func (s *socket) start(opened gateway.Opened) {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	sub, err := t.gw.SubscribeOpened(ctx, opened, t.cfg.PingInterval, s.wake)
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failLocked(err)
		return
	}
	s.sub = sub
	t.mu.Lock()
	t.sockets[s] = struct{}{}
	draining := t.draining
	t.mu.Unlock()
	s.beat = time.AfterFunc(t.cfg.PingInterval, s.heartbeat)
	if draining {
		s.closeLocked(closeRestart, reasonDraining)
		return
	}
	// What arrived since the connect: the first read of everything.
	s.deliverLocked()
}

// Who has a connection served by the idle poller.
const (
	// turnReading: a read turn runs (or is about to).
	turnReading int32 = iota
	// turnParked: registered with the poller, no goroutine.
	turnParked
	// turnDone: the connection ended.
	turnDone
)

// readTurn reads what arrived, then parks the connection again, or ends it.
func (s *socket) readTurn() {
	if !s.isClosing() && !pending(s.raw) {
		s.park() // woken for nothing (a stale wake-up)
		return
	}
	if err := s.extendRead(); err == nil {
		if err = s.readFrames(); err == nil {
			s.park()
			return
		}
	}
	s.finish()
}

// park hands the idle connection to the poller: it holds no goroutine until
// it becomes readable or something closes it (unpark).
func (s *socket) park() {
	s.turn.Store(turnParked)
	var armErr error
	err := s.raw.Control(func(fd uintptr) { armErr = s.wait.Arm(int(fd)) })
	if err != nil || armErr != nil {
		s.unpark() // closed meanwhile: the turn finds out and finishes
	}
}

// unpark starts a read turn for a parked connection: the poller saw it
// readable, or it was closed here. Nothing happens if a turn runs.
func (s *socket) unpark() {
	if s.poller != nil && s.turn.CompareAndSwap(turnParked, turnReading) {
		go s.readTurn()
	}
}

// run reads until the connection ends, then ends the session (without the
// idle poller).
func (s *socket) run() {
	s.read()
	s.finish()
}

// finish ends the session of a connection whose reading ended.
func (s *socket) finish() {
	t := s.t
	s.turn.Store(turnDone)
	if s.poller != nil {
		s.wait.Remove()
	}
	s.mu.Lock()
	s.stopLocked()
	s.mu.Unlock()
	_ = s.conn.NetConn().Close()
	t.mu.Lock()
	delete(t.sockets, s)
	t.mu.Unlock()
	// The connection was the session: end it now, rather than after the
	// session timeout, so its presences leave at once. With Redis, several
	// instances may hold sockets of one user; each ends only its own
	// session, and EndSession announces the leave exactly once whoever
	// else (an expiry, /api/disconnect) ends it too. If this instance dies
	// instead, nothing ends the session here: its deadline, which the
	// gateway keeps at least half a session timeout ahead while the
	// subscription is held, passes, and any instance's expiry ends it.
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	var endErr error
	s.mu.Lock()
	sub := s.sub
	s.mu.Unlock()
	if sub != nil {
		_, endErr = sub.End(ctx, "closed")
	} else {
		_, endErr = t.gw.EndSession(ctx, s.tok.SessionID, "closed")
	}
	cancel()
	if endErr != nil {
		t.cfg.Logger.Warn("websocket: ending the session of a closed connection failed; it expires after the session timeout", "err", endErr)
	}
	t.open.Add(-1)
	t.gw.Observer().Open(transportName, -1)
}

// setUpReads sets the message limit and the pong handler.
func (s *socket) setUpReads() {
	s.conn.SetReadLimit(s.t.cfg.MaxMessageBytes)
	s.conn.SetPongHandler(func(string) error {
		s.lastRead.Store(time.Now().UnixNano())
		return s.extendRead()
	})
}

// read reads frames until the connection ends, handing each text message
// to the gateway as one frame, in order. While nothing arrives it waits
// for the connection to become readable on a shallow stack; the frames are
// read and applied by a short-lived goroutine, whose deep stack goes with
// it, one batch at a time.
func (s *socket) read() {
	for {
		if err := s.extendRead(); err != nil {
			return
		}
		if s.readable != nil {
			if err := s.readable(); err != nil {
				return // closed, broken, or idle too long
			}
		}
		s.reading.Add(1)
		go func() {
			defer s.reading.Done()
			s.readErr = s.readFrames()
		}()
		s.reading.Wait()
		if s.readErr != nil {
			return // closed by either side, broken, idle too long, or too big (1009 sent)
		}
	}
}

// readBuffers lends read buffers (as bufio.Readers of readBufferSize) to
// connections while they read frames.
var readBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}

// borrowReadBuffer gives br a pooled buffer, before frames are read. Only
// readFrames calls it (gorilla reads br only there), on its short-lived
// stack: the pool's work must not grow the waiting goroutine's stack.
func (s *socket) borrowReadBuffer() {
	if s.lent != nil {
		return
	}
	s.lent = readBuffers.Get().(*bufio.Reader)
	s.lent.Reset(s.out)
	*s.br = *s.lent
}

// returnReadBuffer takes br's buffer back to the pool once br holds no
// unread bytes; br is then empty (Buffered is 0) until the next borrow.
// Only readFrames calls it.
func (s *socket) returnReadBuffer() {
	if s.lent == nil || s.br.Buffered() > 0 {
		return // not used up (the reader is ending): keep it
	}
	*s.br = bufio.Reader{}
	s.lent.Reset(nil)
	readBuffers.Put(s.lent)
	s.lent = nil
}

// readFrames reads and applies frames until what arrived is used up (or,
// with no shallow wait, one frame).
func (s *socket) readFrames() error {
	if s.readable != nil {
		s.borrowReadBuffer()
		defer s.returnReadBuffer()
	}
	for {
		typ, p, err := s.conn.ReadMessage()
		if err != nil {
			return err
		}
		s.lastRead.Store(time.Now().UnixNano())
		switch {
		case s.isClosing():
			// Waiting for the client's close frame: what it sent before
			// it read ours is not applied.
		case typ != gws.TextMessage:
			s.refuse("binary", closeUnsupported, reasonBinary)
		case !utf8.Valid(p):
			s.refuse("malformed", closeBadData, reasonUTF8)
		default:
			s.handle(p)
		}
		if s.readable == nil || s.br.Buffered() == 0 {
			return nil
		}
		if err := s.extendRead(); err != nil {
			return err
		}
	}
}

// extendRead moves the read deadline an idle timeout ahead, unless the
// connection is closing (closeGrace then bounds the wait).
func (s *socket) extendRead() error {
	if s.isClosing() {
		return nil
	}
	return s.conn.SetReadDeadline(time.Now().Add(s.t.cfg.IdleTimeout))
}

func (s *socket) isClosing() bool { return s.done.Load() }

// refuse closes the connection for bad input, counted by reason.
func (s *socket) refuse(reason string, code int, text string) {
	s.t.gw.Observer().Refused(transportName, reason)
	s.mu.Lock()
	s.closeLocked(code, text)
	s.mu.Unlock()
}

// handle applies one frame. A session over its rate is slowed down, not
// refused: its frame waits, and the connection is not read meanwhile.
func (s *socket) handle(frame []byte) {
	t := s.t
	obs := t.gw.Observer()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		err := t.gw.Handle(ctx, s.tok.SessionID, [][]byte{frame})
		cancel()
		var batchErr *gateway.BatchError
		switch {
		case err == nil:
			obs.Received(transportName, 1)
			return
		case errors.Is(err, gateway.ErrRateLimited):
			obs.Refused(transportName, "rate_limited")
			time.Sleep(rateLimitWait)
			if s.isClosing() {
				return
			}
			continue
		case errors.Is(err, gateway.ErrNoSession):
			obs.Refused(transportName, "no_session")
			s.mu.Lock()
			s.closeLocked(closeGoingAway, reasonGone)
			s.mu.Unlock()
		case errors.Is(err, gateway.ErrPayloadTooLarge):
			s.refuse("payload_too_large", closeTooBig, closeReason(err))
		case errors.As(err, &batchErr):
			s.refuse("malformed", closeBadData, closeReason(batchErr.Err))
		default:
			t.cfg.Logger.Error("websocket: handling a frame failed", "err", err)
			s.refuse("unavailable", closeUnavailable, reasonStore)
		}
		return
	}
}

// closeReason fits an error's text in a close frame (123 bytes).
func closeReason(err error) string {
	msg := err.Error()
	if len(msg) <= 123 {
		return msg
	}
	msg = msg[:120]
	for !utf8.ValidString(msg) {
		msg = msg[:len(msg)-1]
	}
	return msg + "..."
}

// wake is the subscription's wake-up: schedule a delivery. It runs on the
// publisher's goroutine and must not block.
func (s *socket) wake() {
	if s.queued.CompareAndSwap(false, true) {
		go s.deliver()
	}
}

func (s *socket) deliver() {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Cleared only once running: while a task waits for the lock, further
	// wake-ups find one queued and start none.
	s.queued.Store(false)
	s.deliverLocked()
}

func (s *socket) deliverLocked() {
	if s.closing || s.sub == nil {
		return
	}
	if !s.retryAt.IsZero() && time.Now().Before(s.retryAt.Add(-time.Millisecond)) {
		return // the retry timer delivers what this wake-up announced
	}
	// The stores bound their own calls; a delivery reads what a wake-up
	// announced.
	d, err := s.sub.Ready(context.Background())
	if err != nil {
		s.storeFailedLocked(err)
		return
	}
	s.storeAnsweredLocked()
	s.sendLocked(d)
}

// storeFailedLocked handles a store error of a delivery or a check: the
// connection ends when the session is gone or the store has failed for too
// long; otherwise it waits and retries (see gateway.StoreRetry).
func (s *socket) storeFailedLocked(err error) {
	now := time.Now()
	first := !s.failing.Failing()
	wait, retry := s.failing.Failed(s.t.gw, err, now)
	if !retry {
		s.failLocked(err)
		return
	}
	if first {
		s.t.cfg.Logger.Debug("websocket: store call failed; the socket waits and retries", "session", gateway.LogSession(s.tok.SessionID), "err", err)
	}
	s.retryAt = now.Add(wait)
	if s.retry == nil {
		s.retry = time.AfterFunc(wait, s.wake)
	} else {
		s.retry.Reset(wait)
	}
}

// storeAnsweredLocked ends a spell of store failures.
func (s *socket) storeAnsweredLocked() {
	if s.failing.Failing() {
		d := s.failing.Answered(time.Now())
		s.t.cfg.Logger.Debug("websocket: the store answers again", "session", gateway.LogSession(s.tok.SessionID), "failed_for", d)
		s.retryAt = time.Time{}
	}
}

// heartbeat runs every PingInterval: the subscription's check (no store
// call), then a ping if the client was silent for two intervals.
func (s *socket) heartbeat() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return
	}
	interval := s.t.cfg.PingInterval
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	d, err := s.sub.Check(ctx, interval)
	cancel()
	if err == nil {
		s.storeAnsweredLocked()
		s.sendLocked(d)
	} else {
		s.storeFailedLocked(err)
	}
	if s.closing {
		return
	}
	silent := time.Since(time.Unix(0, s.lastRead.Load()))
	if silent >= s.t.cfg.IdleTimeout {
		// A parked connection has no read deadline: the idle timeout is
		// kept here.
		s.abortLocked()
		return
	}
	if silent >= 2*interval {
		if err := s.conn.WriteControl(gws.PingMessage, nil, time.Now().Add(s.t.cfg.WriteTimeout)); err != nil {
			s.abortLocked()
			return
		}
	}
	s.beat.Reset(interval)
}

// sendLocked writes a delivery's frames, one text message each.
func (s *socket) sendLocked(d *gateway.Delivery) {
	if len(d.Frames) == 0 {
		return
	}
	timeout := s.t.cfg.WriteTimeout
	gather := len(d.Frames) > 1 && s.out != nil
	if gather {
		s.out.gather()
	}
	for _, f := range d.Frames {
		// Moving the deadline is a timer update: only once half spent.
		if now := time.Now(); s.deadline.Sub(now) < timeout/2 {
			s.deadline = now.Add(timeout)
			_ = s.conn.SetWriteDeadline(s.deadline)
		}
		if err := s.conn.WriteMessage(gws.TextMessage, f); err != nil {
			// A client that stopped reading (its buffers full for the
			// write timeout), or a broken connection: drop it.
			if gather {
				s.out.discard()
			}
			s.abortLocked()
			return
		}
	}
	if gather {
		if err := s.out.flush(); err != nil {
			s.abortLocked()
			return
		}
	}
	d.Observe(s.t.gw.Observer(), transportName)
}

// failLocked ends the connection after a store error: 1001 when the session
// ended (/api/disconnect, or it expired), else 1011. phoenix.js reconnects
// after either and rejoins its channels.
func (s *socket) failLocked(err error) {
	if errors.Is(err, gateway.ErrNoSession) {
		s.closeLocked(closeGoingAway, reasonGone)
		return
	}
	s.t.cfg.Logger.Error("websocket: reading the session failed", "err", err)
	s.t.gw.Observer().Refused(transportName, "unavailable")
	s.closeLocked(closeUnavailable, reasonStore)
}

// closeLocked starts a server-initiated close: the close frame goes out, and
// the reader waits closeGrace at most for the client's close frame (then
// run closes the connection).
func (s *socket) closeLocked(code int, reason string) {
	if s.closing {
		return
	}
	s.stopLocked()
	_ = s.conn.WriteControl(gws.CloseMessage, gws.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	// Whatever the reader's deadline, the connection ends closeGrace from now.
	netConn := s.conn.NetConn()
	time.AfterFunc(closeGrace, func() {
		_ = netConn.Close()
		s.unpark() // a parked connection is not read: a turn sees it closed
	})
}

// abortLocked closes the connection without a close frame: it is broken, or
// its client does not read.
func (s *socket) abortLocked() {
	s.stopLocked()
	_ = s.conn.NetConn().Close()
	s.unpark()
}

// stopLocked marks the connection closing: no more writes or timers.
func (s *socket) stopLocked() {
	if s.closing {
		return
	}
	s.closing = true
	s.done.Store(true)
	if s.beat != nil {
		s.beat.Stop()
	}
	if s.retry != nil {
		s.retry.Stop()
	}
}

// readBufferSize is the size of a connection's read buffer.
const readBufferSize = 512

// hijacker gives the upgrader a read buffer of ours, so that the socket can
// tell whether it holds unread bytes before it waits on the connection, and
// a connection of ours to write to (outConn).
type hijacker struct {
	http.ResponseWriter
	br  *bufio.Reader // nil if the upgrader kept net/http's
	out *outConn
}

// Hijack implements http.Hijacker.
func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil || brw.Reader.Buffered() > 0 {
		// The upgrader refuses a client that sent data before the
		// handshake completed; let it see that.
		return conn, brw, err
	}
	h.br = bufio.NewReaderSize(conn, readBufferSize)
	h.out = &outConn{Conn: conn}
	return h.out, bufio.NewReadWriter(h.br, brw.Writer), nil
}

// outConn is the connection as gorilla writes to it, saving two costs per
// frame: gorilla sets the write deadline before every write (a runtime
// timer update), which outConn passes on only when it changed; and while a
// delivery of several frames is written, their writes are gathered and go
// out as one (one system call, one segment, instead of one per frame).
type outConn struct {
	net.Conn
	mu        sync.Mutex
	deadline  time.Time
	gathering bool
	buf       *[]byte // from gatherBuffers while gathering
}

// gatherBuffers lends the buffers a delivery's frames are gathered in.
var gatherBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// gatherLimit is how much is gathered before it is written: a long
// delivery goes out in writes of about this size, each under the write
// deadline as it is then.
const gatherLimit = 32 << 10

// SetWriteDeadline implements net.Conn.
func (c *outConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Equal(c.deadline) {
		return nil
	}
	c.deadline = t
	return c.Conn.SetWriteDeadline(t)
}

// Write implements net.Conn. gorilla writes one frame at a time, never
// concurrently; a delivery's frames are gathered up to gatherLimit.
func (c *outConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.gathering {
		return c.Conn.Write(p)
	}
	if len(*c.buf) > 0 && len(*c.buf)+len(p) > gatherLimit {
		if _, err := c.Conn.Write(*c.buf); err != nil {
			return 0, err
		}
		*c.buf = (*c.buf)[:0]
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

// gather holds the writes until flush.
func (c *outConn) gather() {
	c.mu.Lock()
	c.gathering = true
	c.buf = gatherBuffers.Get().(*[]byte)
	c.mu.Unlock()
}

// discard stops gathering and drops what was gathered.
func (c *outConn) discard() {
	c.mu.Lock()
	c.gathering, c.buf = false, nil
	c.mu.Unlock()
}

// flush writes what was gathered, in one write.
func (c *outConn) flush() error {
	c.mu.Lock()
	buf := c.buf
	c.gathering, c.buf = false, nil
	c.mu.Unlock()
	_, err := c.Conn.Write(*buf)
	if cap(*buf) <= 64<<10 {
		*buf = (*buf)[:0]
		gatherBuffers.Put(buf)
	}
	return err
}
