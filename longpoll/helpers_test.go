package longpoll_test

import (
	"cmp"
	"context"
	"encoding/json"
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

	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/handback"
	"github.com/sluicegw/sluice/internal/testroom"
	"github.com/sluicegw/sluice/longpoll"
	"github.com/sluicegw/sluice/topics"
)

// testSecret is the secret key base the test server verifies user tokens with.
const testSecret = "longpoll-test-secret-key-base-0123456789abcdef"

const lpPath = "/socket/longpoll"

// envConfig tunes a test server; zero values take the defaults below.
type envConfig struct {
	Window         time.Duration  // default 300ms
	SessionTimeout time.Duration  // default: the gateway's (15s)
	Gate           *testroom.Gate // holds user 42's join of room:slow
	// Limits, when set, adjust the gateway's config (limits, observer)
	// and Origins the transport's.
	Limits  func(*gateway.Config)
	Origins *gateway.OriginChecker
	// Gateway, when set, is served instead of a new one (its other
	// settings above are then ignored).
	Gateway *gateway.Gateway
	// NoPark serves every poll in its handler, as without ParkWith; by
	// default waiting polls are parked, as `sluice serve` does.
	NoPark bool
	// ReadHeaderTimeout and IdleTimeout are the server's (default none and
	// 2 minutes, as `sluice serve` has).
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
}

// env is one test server: a Gateway behind the LongPoll transport.
type env struct {
	gw     *gateway.Gateway
	lp     *longpoll.Transport
	srv    *httptest.Server
	window time.Duration
	http   *http.Client
}

func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	if cfg.Window == 0 {
		cfg.Window = 300 * time.Millisecond
	}
	log := slog.New(slog.DiscardHandler)
	store := gateway.NewMemoryStore()
	router := &topics.Router[gateway.Handler]{}
	router.Add("room:*", testroom.Handler{Gate: cfg.Gate})
	gcfg := gateway.Config{
		Router:         router,
		Authenticate:   gateway.TokenAuthenticator(testSecret, 24*time.Hour),
		Sessions:       store,
		Presence:       store,
		Broker:         topics.NewMemoryBroker(100, time.Hour),
		SessionTimeout: cfg.SessionTimeout,
		Logger:         log,
	}
	if cfg.Limits != nil {
		cfg.Limits(&gcfg)
	}
	gw, err := gateway.New(gcfg)
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	if cfg.Gateway != nil {
		gw = cfg.Gateway
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	lp := longpoll.New(gw, longpoll.Config{Window: cfg.Window, MaxBodyBytes: 4096, Origins: cfg.Origins, Logger: log})
	lp.Register(e, lpPath)
	// A handler panic is a server crash as far as the client is concerned
	// (net/http drops the connection without an answer): record it and fail
	// the test, whatever the client made of it.
	var (
		panicsMu sync.Mutex
		panics   []string
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				panicsMu.Lock()
				panics = append(panics, fmt.Sprintf("%s %s: %v", r.Method, r.URL.RequestURI(), v))
				panicsMu.Unlock()
				panic(v)
			}
		}()
		e.ServeHTTP(w, r)
	}))
	idle := cmp.Or(cfg.IdleTimeout, 2*time.Minute)
	srv.Config.ReadHeaderTimeout, srv.Config.IdleTimeout = cfg.ReadHeaderTimeout, idle
	if !cfg.NoPark {
		hl := handback.Wrap(srv.Listener)
		srv.Listener = hl
		lp.ParkWith(hl.Return, idle)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		panicsMu.Lock()
		defer panicsMu.Unlock()
		for _, p := range panics {
			t.Errorf("the server panicked serving %s", p)
		}
	})
	// No keep-alive: Go's client silently retries a GET whose reused
	// connection was dropped, which would hide a crash that a browser sees.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	return &env{gw: gw, lp: lp, srv: srv, window: cfg.Window, http: hc}
}

// lpResp is a decoded LongPoll answer.
type lpResp struct {
	HTTPStatus int
	Header     http.Header
	Body       []byte
	// Keys are the top-level members of a JSON body (nil when not JSON).
	Keys     map[string]json.RawMessage
	Status   int
	Token    string
	Messages []string
	Error    string
	Elapsed  time.Duration
}

func (r *lpResp) has(key string) bool { _, ok := r.Keys[key]; return ok }

// request sends one request. rawQuery is used as is, so that the order of
// repeated parameters is under the test's control.
func (e *env) request(t *testing.T, method, rawQuery string, hdr map[string]string, body string) *lpResp {
	t.Helper()
	r, err := e.do(method, rawQuery, hdr, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// do is request for use off the test goroutine: it reports failures as an
// error instead of failing the test.
func (e *env) do(method, rawQuery string, hdr map[string]string, body string) (*lpResp, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	u := e.srv.URL + lpPath
	if rawQuery != "" {
		u += "?" + rawQuery
	}
	req, err := http.NewRequestWithContext(context.Background(), method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("new request: %w", err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	start := time.Now()
	res, err := e.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: read body: %w", method, u, err)
	}
	r := &lpResp{HTTPStatus: res.StatusCode, Header: res.Header, Body: b, Elapsed: time.Since(start)}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &r.Keys); err != nil {
			return nil, fmt.Errorf("%s %s: body is not a JSON object: %w: %q", method, u, err, b)
		}
		if raw, ok := r.Keys["status"]; ok {
			if err := json.Unmarshal(raw, &r.Status); err != nil {
				return nil, fmt.Errorf("status is not an integer: %s", raw)
			}
		}
		if raw, ok := r.Keys["token"]; ok {
			if err := json.Unmarshal(raw, &r.Token); err != nil {
				return nil, fmt.Errorf("token is not a string: %s", raw)
			}
		}
		if raw, ok := r.Keys["messages"]; ok {
			if err := json.Unmarshal(raw, &r.Messages); err != nil {
				return nil, fmt.Errorf("messages is not an array of strings: %s", raw)
			}
		}
		if raw, ok := r.Keys["error"]; ok {
			if err := json.Unmarshal(raw, &r.Error); err != nil {
				return nil, fmt.Errorf("error is not a string: %s", raw)
			}
		}
	}
	return r, nil
}

type asyncResp struct {
	r   *lpResp
	err error
}

// startGet sends a GET in the background.
func (e *env) startGet(rawQuery string) <-chan asyncResp {
	return e.start(http.MethodGet, rawQuery, nil, "")
}

// start sends a request in the background.
func (e *env) start(method, rawQuery string, hdr map[string]string, body string) <-chan asyncResp {
	ch := make(chan asyncResp, 1)
	go func() {
		r, err := e.do(method, rawQuery, hdr, body)
		ch <- asyncResp{r, err}
	}()
	return ch
}

// await waits for a request started by startGet.
func await(t *testing.T, ch <-chan asyncResp) *lpResp {
	t.Helper()
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatal(a.err)
		}
		return a.r
	case <-time.After(15 * time.Second):
		t.Fatal("the background request never returned")
	}
	return nil
}

// userToken signs a user token for id with the test secret.
func userToken(t *testing.T, id string) string {
	return testroom.UserToken(t, testSecret, id)
}

func qe(s string) string { return url.QueryEscape(s) }

// client is a hand-written LongPoll client of one session, sending its
// parameters as phoenix.js does: the app's user token first, the session
// token last.
type client struct {
	e       *env
	userTok string
	vsn     string
	tok     string // current session token
}

// connect creates a session for user id with the given vsn.
func (e *env) connect(t *testing.T, id, vsn string) *client {
	t.Helper()
	ut := userToken(t, id)
	r := e.request(t, http.MethodGet, "token="+qe(ut)+"&vsn="+vsn, nil, "")
	if r.HTTPStatus != http.StatusOK || r.Status != 410 || r.Token == "" {
		t.Fatalf("connect: want HTTP 200 {status:410, token}, got HTTP %d %s", r.HTTPStatus, r.Body)
	}
	return &client{e: e, userTok: ut, vsn: vsn, tok: r.Token}
}

func (c *client) queryWith(sessionTok string) string {
	return "token=" + qe(c.userTok) + "&vsn=" + c.vsn + "&token=" + qe(sessionTok)
}

// pollWith GETs with the given session token and returns the answer as is.
func (c *client) pollWith(t *testing.T, sessionTok string) *lpResp {
	t.Helper()
	return c.e.request(t, http.MethodGet, c.queryWith(sessionTok), map[string]string{"Accept": "application/json"}, "")
}

// poll GETs with the current token, requires a 200 or 204 answer carrying a
// token, adopts that token, and returns the answer.
func (c *client) poll(t *testing.T) *lpResp {
	t.Helper()
	r := c.pollWith(t, c.tok)
	if r.HTTPStatus != http.StatusOK || (r.Status != 200 && r.Status != 204) {
		t.Fatalf("poll: want HTTP 200 with status 200 or 204, got HTTP %d %s", r.HTTPStatus, r.Body)
	}
	if !r.has("token") || r.Token == "" {
		t.Fatalf("poll: answer without token: %s", r.Body)
	}
	if !r.has("messages") {
		t.Fatalf("poll: answer without messages: %s", r.Body)
	}
	c.tok = r.Token
	return r
}

// recv polls and requires status 200 with at least one message.
func (c *client) recv(t *testing.T) []string {
	t.Helper()
	r := c.poll(t)
	if r.Status != 200 || len(r.Messages) == 0 {
		t.Fatalf("poll: want status 200 with messages, got %s", r.Body)
	}
	return r.Messages
}

// post sends body with the content type and returns the answer as is.
func (c *client) post(t *testing.T, contentType, body string) *lpResp {
	t.Helper()
	return c.e.request(t, http.MethodPost, c.queryWith(c.tok), map[string]string{"Content-Type": contentType}, body)
}

// send POSTs frames as one ndjson batch, as phoenix.js does, and requires
// HTTP 200 {"status":200}.
func (c *client) send(t *testing.T, frames ...string) {
	t.Helper()
	r := c.post(t, "application/x-ndjson", strings.Join(frames, "\n"))
	requirePosted(t, r)
}

func requirePosted(t *testing.T, r *lpResp) {
	t.Helper()
	if r.HTTPStatus != http.StatusOK || r.Status != 200 {
		t.Fatalf("POST: want HTTP 200 {status:200}, got HTTP %d %s", r.HTTPStatus, r.Body)
	}
}

// join joins topic with join_ref = ref = jr and drains what the join sent.
func (c *client) join(t *testing.T, topic, jr, name string) []string {
	t.Helper()
	c.send(t, `["`+jr+`","`+jr+`","`+topic+`","phx_join",{"name":"`+name+`"}]`)
	msgs := c.recv(t)
	want := `["` + jr + `","` + jr + `","` + topic + `","phx_reply",{"response":{"joined":"` + topic + `"},"status":"ok"}]`
	if len(msgs) == 0 || !jsonEqual(msgs[0], want) {
		t.Fatalf("join %s: want first message %s, got %q", topic, want, msgs)
	}
	return msgs
}

// jsonEqual reports whether two JSON texts hold the same value.

// requireFrames checks the messages of a poll one by one.
func requireFrames(t *testing.T, got []string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("want %d messages, got %d:\n%s", len(want), len(got), strings.Join(got, "\n"))
	}
	for i := range want {
		if !jsonEqual(got[i], want[i]) {
			t.Fatalf("message %d mismatch\n got: %s\nwant: %s\nall: %s", i, got[i], want[i], strings.Join(got, "\n"))
		}
	}
}

// The frame helpers shared with the other transport's tests.
var (
	jsonEqual    = testroom.JSONEqual
	requireFrame = testroom.RequireFrame
	decodeV2     = testroom.DecodeV2
)

// events lists the topic/event of each V2 message, for failure messages and
// order checks.
func events(t *testing.T, msgs []string) []string {
	t.Helper()
	out := make([]string, len(msgs))
	for i, m := range msgs {
		f := decodeV2(t, m)
		out[i] = f.Topic + " " + f.Event
	}
	return out
}

// presenceMap decodes a presence map {key: {metas: [...]}}.
type presenceMap map[string]struct {
	Metas []map[string]any `json:"metas"`
}

type presenceDiff struct {
	Joins  presenceMap `json:"joins"`
	Leaves presenceMap `json:"leaves"`
}

// sessionID is the session part of a Sluice session token.
func sessionID(t *testing.T, tok string) string {
	t.Helper()
	st, ok := gateway.ParseSessionToken(tok)
	if !ok {
		t.Fatalf("not a session token: %q", tok)
	}
	return st.SessionID
}
