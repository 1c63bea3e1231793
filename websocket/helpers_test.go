package websocket_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	gws "github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"
	"go.uber.org/goleak"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/testroom"
	"github.com/sluicegw/sluice/topics"
	"github.com/sluicegw/sluice/websocket"
)

// TestMain fails the package if any goroutine outlives the tests: a socket
// that never noticed its client left, a delivery task, a client reader. The
// idle poller's one goroutine lives as long as the process, by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(websocket.IdlePollerLoop))
}

const testSecret = "websocket-test-secret-key-base-0123456789abcdef"

const wsPath = "/socket/websocket"

// waitFor bounds every wait of a test for something the server does:
// generous, since CI runs -race suites side by side on a loaded machine (a
// passing wait returns as soon as the thing happens).
const waitFor = 15 * time.Second

// envConfig tunes a test server; zero values take the transport's and the
// gateway's defaults, except SessionTimeout (a minute here, so that a
// session that ends is seen to end at once, not by expiring).
type envConfig struct {
	ws             websocket.Config
	SessionTimeout time.Duration
	MaxPayload     int
	PostRate       float64
	PostBurst      int
	Origins        []string
	// WrapBroker, when set, wraps the memory broker (to make it fail).
	WrapBroker func(topics.Broker) topics.Broker
}

// env is one test server: a Gateway behind the WebSocket transport.
type env struct {
	gw  *gateway.Gateway
	tr  *websocket.Transport
	srv *httptest.Server
	obs *recorder
	url string // ws://host/socket/websocket
}

func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = time.Minute
	}
	log := slog.New(slog.DiscardHandler)
	store := gateway.NewMemoryStore()
	router := &topics.Router[gateway.Handler]{}
	router.Add("room:*", testroom.Handler{})
	obs := newRecorder()
	var broker topics.Broker = topics.NewMemoryBroker(1000, time.Hour)
	if cfg.WrapBroker != nil {
		broker = cfg.WrapBroker(broker)
	}
	gw, err := gateway.New(gateway.Config{
		Router:          router,
		Authenticate:    gateway.TokenAuthenticator(testSecret, 24*time.Hour),
		Sessions:        store,
		Presence:        store,
		Broker:          broker,
		SessionTimeout:  cfg.SessionTimeout,
		MaxPayloadBytes: cfg.MaxPayload,
		PostRate:        cfg.PostRate,
		PostBurst:       cfg.PostBurst,
		Logger:          log,
		Observer:        obs,
	})
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	wcfg := cfg.ws
	wcfg.Logger = log
	if cfg.Origins != nil {
		if wcfg.Origins, err = gateway.NewOriginChecker(cfg.Origins); err != nil {
			t.Fatalf("NewOriginChecker: %v", err)
		}
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	tr := websocket.New(gw, wcfg)
	tr.Register(e, wsPath)
	srv := httptest.NewServer(e)
	ev := &env{gw: gw, tr: tr, srv: srv, obs: obs, url: "ws" + strings.TrimPrefix(srv.URL, "http") + wsPath}
	t.Cleanup(func() {
		// Every socket ends (its clients are closed by their own cleanups,
		// registered later and so run first); then the server goes.
		tr.Close()
		deadline := time.Now().Add(waitFor)
		for ev.obs.open() != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := ev.obs.open(); n != 0 {
			t.Errorf("%d sockets still open %v after the test", n, waitFor)
		}
		srv.Close()
	})
	return ev
}

// userToken signs a user token for id with the test secret.
func userToken(t *testing.T, id string) string {
	return testroom.UserToken(t, testSecret, id)
}

// query is the connect query of user with vsn.
func query(t *testing.T, user, vsn string) string {
	return "vsn=" + vsn + "&token=" + url.QueryEscape(userToken(t, user))
}

// client is a WebSocket client: a goroutine reads every message into frames
// until the connection ends.
type client struct {
	t      *testing.T
	conn   *gws.Conn
	frames chan string
	ended  chan struct{}
	// readErr is why reading ended (a *gws.CloseError for a close frame).
	readErr error
	seen    []string
	// Subprotocol is what the server chose.
	Subprotocol string
}

// dial connects to e with the query and headers, and fails the test unless
// the upgrade succeeds.
func (e *env) dial(t *testing.T, rawQuery string, hdr http.Header) *client {
	t.Helper()
	c, res, err := e.tryDial(rawQuery, hdr)
	if err != nil {
		status, body := 0, ""
		if res != nil {
			status = res.StatusCode
			b, _ := io.ReadAll(res.Body)
			body = string(b)
		}
		t.Fatalf("dial %s: %v (HTTP %d %s)", rawQuery, err, status, body)
	}
	cl := &client{t: t, conn: c, frames: make(chan string, 10000), ended: make(chan struct{}), Subprotocol: c.Subprotocol()}
	go cl.readLoop()
	t.Cleanup(cl.close)
	return cl
}

// connect dials as user with V2 and the token parameter.
func (e *env) connect(t *testing.T, user string) *client {
	t.Helper()
	return e.dial(t, query(t, user, "2.0.0"), nil)
}

func (e *env) tryDial(rawQuery string, hdr http.Header) (*gws.Conn, *http.Response, error) {
	d := gws.Dialer{HandshakeTimeout: waitFor}
	return d.Dial(e.url+"?"+rawQuery, hdr)
}

// refusal dials, requires an HTTP refusal with a JSON error of status, and
// returns the error text.
func (e *env) refusal(t *testing.T, what, rawQuery string, hdr http.Header, status int) string {
	t.Helper()
	c, res, err := e.tryDial(rawQuery, hdr)
	if err == nil {
		c.Close()
		t.Fatalf("%s: the upgrade succeeded, want HTTP %d", what, status)
	}
	if res == nil {
		t.Fatalf("%s: %v, want HTTP %d", what, err, status)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var body struct {
		Status int    `json:"status"`
		Error  string `json:"error"`
	}
	if res.StatusCode != status || json.Unmarshal(b, &body) != nil || body.Status != status || body.Error == "" {
		t.Fatalf("%s: want HTTP %d {status, error}, got HTTP %d %q", what, status, res.StatusCode, b)
	}
	return body.Error
}

func (c *client) readLoop() {
	defer close(c.ended)
	for {
		_, p, err := c.conn.ReadMessage()
		if err != nil {
			c.readErr = err
			return
		}
		c.frames <- string(p)
	}
}

// send writes one text message.
func (c *client) send(frame string) {
	c.t.Helper()
	if err := c.conn.WriteMessage(gws.TextMessage, []byte(frame)); err != nil {
		c.t.Fatalf("send %s: %v", frame, err)
	}
}

// frame is a received V2 frame and its text.
type frame struct {
	testroom.Frame
	raw string
}

func (f frame) String() string { return f.raw }

// seenText lists the frames seen so far, each cut at 200 bytes.
func (c *client) seenText() string {
	var b strings.Builder
	for _, s := range c.seen {
		if len(s) > 200 {
			s = s[:200] + "..."
		}
		b.WriteString("\n  " + s)
	}
	return b.String()
}

// waitFrame returns the first frame (after those already returned) for
// which match is true; the frames before it are skipped.
func (c *client) waitFrame(what string, match func(testroom.Frame) bool) frame {
	c.t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case s := <-c.frames:
			c.seen = append(c.seen, s)
			f := testroom.DecodeV2(c.t, s)
			if match(f) {
				return frame{f, s}
			}
		case <-c.ended:
			// drain what was read before the end
			select {
			case s := <-c.frames:
				c.frames <- s
				continue
			default:
			}
			c.t.Fatalf("connection ended (%v) while waiting for %s; seen: %s", c.readErr, what, c.seenText())
		case <-timeout:
			c.t.Fatalf("no %s within %v; seen: %s", what, waitFor, c.seenText())
		}
	}
}

// reply waits for the reply to ref on topic and returns its payload.
func (c *client) reply(topic, ref string) frame {
	c.t.Helper()
	return c.waitFrame("phx_reply to "+ref+" on "+topic, func(f testroom.Frame) bool {
		return f.Event == "phx_reply" && f.Topic == topic && f.Ref != nil && *f.Ref == ref
	})
}

// join joins topic with join_ref = ref = ref, and requires an ok reply.
func (c *client) join(topic, ref string) {
	c.t.Helper()
	c.send(fmt.Sprintf(`[%q,%q,%q,"phx_join",{}]`, ref, ref, topic))
	f := c.reply(topic, ref)
	if !strings.Contains(string(f.Payload), `"status":"ok"`) {
		c.t.Fatalf("join %s: %s", topic, f.Payload)
	}
}

// waitClosed waits until the server ended the connection and returns the
// close frame's code (-1 if it ended without one).
func (c *client) waitClosed(what string) (int, string) {
	c.t.Helper()
	select {
	case <-c.ended:
	case <-time.After(waitFor):
		c.t.Fatalf("%s: the connection was not closed within %v", what, waitFor)
	}
	var ce *gws.CloseError
	if errors.As(c.readErr, &ce) {
		return ce.Code, ce.Text
	}
	return -1, fmt.Sprint(c.readErr)
}

// requireOpen fails unless the connection still answers a ping push.
func (c *client) requireOpen(topic, ref string) {
	c.t.Helper()
	c.send(fmt.Sprintf(`[null,%q,%q,"ping",{"alive":%q}]`, ref, topic, ref))
	c.reply(topic, ref)
}

func (c *client) close() {
	_ = c.conn.Close()
	<-c.ended
}

// recorder is an Observer that counts what /metrics would show.
type recorder struct {
	gateway.NopObserver
	mu        sync.Mutex
	opened    map[string]int
	received  map[string]int
	delivered map[string]int
	refused   map[string]int
	ended     map[string]int
}

func newRecorder() *recorder {
	return &recorder{opened: map[string]int{}, received: map[string]int{}, delivered: map[string]int{}, refused: map[string]int{}, ended: map[string]int{}}
}

func (r *recorder) Open(transport string, delta int) {
	r.mu.Lock()
	r.opened[transport] += delta
	r.mu.Unlock()
}

func (r *recorder) Received(transport string, n int) {
	r.mu.Lock()
	r.received[transport] += n
	r.mu.Unlock()
}

func (r *recorder) Delivered(transport, kind string, _ time.Duration) {
	r.mu.Lock()
	r.delivered[transport+"/"+kind]++
	r.mu.Unlock()
}

func (r *recorder) Refused(transport, reason string) {
	r.mu.Lock()
	r.refused[transport+"/"+reason]++
	r.mu.Unlock()
}

func (r *recorder) SessionEnded(reason string) {
	r.mu.Lock()
	r.ended[reason]++
	r.mu.Unlock()
}

func (r *recorder) open() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opened["websocket"]
}

func (r *recorder) count(m *map[string]int, key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return (*m)[key]
}

// until waits for cond, failing the test after waitFor.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timeout after %v waiting for %s", waitFor, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
