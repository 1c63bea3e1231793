package sse_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/testroom"
	"github.com/sluicegw/sluice/sse"
	"github.com/sluicegw/sluice/topics"
)

// TestMain fails the package if any goroutine outlives the tests: a stream
// handler that never noticed its client left, a reader of ours, a client
// connection.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testSecret is the secret key base the test server verifies user tokens with.
const testSecret = "sse-test-secret-key-base-0123456789abcdef0123"

const ssePath = "/socket/sse"

// waitFor bounds every wait of a test for something the server sends.
const waitFor = 5 * time.Second

// envConfig tunes a test server; zero values take the defaults below.
type envConfig struct {
	Retry            time.Duration // default 2s
	Heartbeat        time.Duration // default 150ms, so that an idle stream proves itself drained quickly
	MaxLifetime      time.Duration // default 30s
	SessionTimeout   time.Duration // default: the gateway's (15s)
	Padding          int
	AllowCredentials bool
	MaxFrames        int   // default: the transport's (100)
	MaxBodyBytes     int64 // default 4096
	MaxStreams       int
	MaxSessions      int       // per user; default none
	Log              io.Writer // where the server logs, at debug level; default nowhere
	// Redis, if set, holds the sessions and the logs instead of memory,
	// under RedisPrefix (a sluicetest: one the test cleans up).
	Redis       redis.UniversalClient
	RedisPrefix string
	// WrapBroker, when set, wraps the memory broker (to make it fail).
	WrapBroker func(topics.Broker) topics.Broker
	// NoPark serves every stream with its own goroutine (sse.Config.NoPark).
	NoPark bool
	// Shards, when set, is the number of deliverers of parked streams.
	Shards int
	// WriteTimeout is sse.Config.WriteTimeout (default: the transport's).
	WriteTimeout time.Duration
	// AfterSessionEvent, when set, runs once each stream's session event is
	// flushed (sse.SetAfterSessionEvent).
	AfterSessionEvent func()
	// Plain, when set, serves "plain:*" with a handler that accepts every
	// join and tracks no presence (for benchmarks).
	Plain gateway.Handler
}

// env is one test server: a Gateway behind the SSE transport.
type env struct {
	gw   *gateway.Gateway
	srv  *httptest.Server
	cfg  envConfig
	http *http.Client
}

func newEnv(t testing.TB, cfg envConfig) *env {
	t.Helper()
	if cfg.Retry == 0 {
		cfg.Retry = 2 * time.Second
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 150 * time.Millisecond
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = 30 * time.Second
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 4096
	}
	log := slog.New(slog.DiscardHandler)
	if cfg.Log != nil {
		log = slog.New(slog.NewTextHandler(cfg.Log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var store interface {
		gateway.SessionStore
		gateway.PresenceStore
	} = gateway.NewMemoryStore()
	var broker topics.Broker = topics.NewMemoryBroker(100, time.Hour)
	if cfg.Redis != nil {
		store = gateway.NewRedisStore(cfg.Redis, gateway.RedisOptions{Prefix: cfg.RedisPrefix, Logger: log})
		broker = topics.NewRedisBroker(cfg.Redis, topics.RedisOptions{Prefix: cfg.RedisPrefix, MaxLen: 100, Logger: log})
	}
	router := &topics.Router[gateway.Handler]{}
	router.Add("room:*", testroom.Handler{})
	if cfg.Plain != nil {
		router.Add("plain:*", cfg.Plain)
	}
	if cfg.WrapBroker != nil {
		broker = cfg.WrapBroker(broker)
	}
	gw, err := gateway.New(gateway.Config{
		Router:             router,
		Authenticate:       gateway.TokenAuthenticator(testSecret, 24*time.Hour),
		Sessions:           store,
		Presence:           store,
		Broker:             broker,
		SessionTimeout:     cfg.SessionTimeout,
		MaxSessionsPerUser: cfg.MaxSessions,
		Logger:             log,
	})
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	tr := sse.New(gw, sse.Config{
		Retry:            cfg.Retry,
		Heartbeat:        cfg.Heartbeat,
		MaxLifetime:      cfg.MaxLifetime,
		Padding:          cfg.Padding,
		MaxBodyBytes:     cfg.MaxBodyBytes,
		MaxFrames:        cfg.MaxFrames,
		AllowCredentials: cfg.AllowCredentials,
		MaxStreams:       cfg.MaxStreams,
		NoPark:           cfg.NoPark,
		WriteTimeout:     cfg.WriteTimeout,
		Logger:           log,
	})
	if cfg.Shards > 0 {
		sse.SetShards(tr, cfg.Shards)
	}
	if cfg.AfterSessionEvent != nil {
		sse.SetAfterSessionEvent(tr, cfg.AfterSessionEvent)
	}
	tr.Register(e, ssePath)
	// A handler panic is a server crash as far as the client is concerned:
	// record it and fail the test, whatever the client made of it.
	var (
		panicsMu sync.Mutex
		panics   []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	t.Cleanup(func() {
		// Close waits for every handler to return: bound the wait, so that
		// a stream handler that never ends fails the test instead of
		// hanging the package.
		closed := make(chan struct{})
		go func() { tr.Close(); srv.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(waitFor):
			t.Errorf("the server did not close within %v: %d stream handlers still running", waitFor, streamHandlers())
		}
		panicsMu.Lock()
		defer panicsMu.Unlock()
		for _, p := range panics {
			t.Errorf("the server panicked serving %s", p)
		}
	})
	// No keep-alive: nothing of the client outlives a request, and a
	// dropped connection is seen as such.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	return &env{gw: gw, srv: srv, cfg: cfg, http: hc}
}

// streamClient is an HTTP client for streams: no overall timeout (a stream
// lasts as long as it lasts), no keep-alive.
func streamClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
}

// userToken signs a user token for id with the test secret.
func userToken(t *testing.T, id string) string {
	return testroom.UserToken(t, testSecret, id)
}

func qe(s string) string { return url.QueryEscape(s) }

// streamQuery is the query of a stream GET for user's token.
func streamQuery(t *testing.T, user, vsn string) string {
	return "vsn=" + vsn + "&token=" + qe(userToken(t, user))
}

// jsonResp is a decoded JSON answer (an error, or a POST's {"status":200}).
type jsonResp struct {
	HTTPStatus int
	Header     http.Header
	Body       []byte
	Keys       map[string]json.RawMessage
	Status     int
	Error      string
}

// request sends one request to target (a path with its query, e.g. the
// session event's "post") and reads the whole answer.
func (e *env) request(t *testing.T, method, target string, hdr map[string]string, body string) *jsonResp {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, e.srv.URL+target, rd)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := e.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, target, err)
	}
	return decodeResp(t, res, b)
}

// decodeResp decodes a JSON answer's status and error.
func decodeResp(t *testing.T, res *http.Response, b []byte) *jsonResp {
	t.Helper()
	r := &jsonResp{HTTPStatus: res.StatusCode, Header: res.Header, Body: b}
	if len(b) > 0 && strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &r.Keys); err != nil {
			t.Fatalf("%s %s: body is not a JSON object: %v: %q", res.Request.Method, res.Request.URL, err, b)
		}
		_ = json.Unmarshal(r.Keys["status"], &r.Status)
		_ = json.Unmarshal(r.Keys["error"], &r.Error)
	}
	return r
}

// requireJSONError checks a refusal: the HTTP status, a JSON body
// {"status": same, "error": "..."}, not cacheable, readable cross-origin.
func requireJSONError(t *testing.T, what string, r *jsonResp, status int) {
	t.Helper()
	if r.HTTPStatus != status || r.Status != status || r.Error == "" {
		t.Fatalf("%s: want HTTP %d {status:%d, error}, got HTTP %d %q", what, status, status, r.HTTPStatus, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: want a JSON error, got Content-Type %q", what, ct)
	}
	if cc := r.Header.Get("Cache-Control"); !strings.Contains(cc, "no-store") {
		t.Errorf("%s: want Cache-Control with no-store on an error, got %q", what, cc)
	}
	if o := r.Header.Get("Access-Control-Allow-Origin"); o == "" {
		t.Errorf("%s: an error without Access-Control-Allow-Origin cannot be read by a cross-origin page", what)
	}
}

// refused GETs the stream at target, which must be refused, and returns the
// answer. If the server opens a stream instead, it fails at once rather
// than wait for the stream to end.
func (e *env) refused(t *testing.T, target string, hdr map[string]string) *jsonResp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+target, nil)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := e.http.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusOK && strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		s := startStream(res, cancel, time.Now())
		defer s.close()
		h := s.session(t)
		t.Fatalf("GET %s with headers %v: want a refusal, got 200 and a stream of session %s (resumed: %v)", target, hdr, h.Session, h.Resumed)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", target, err)
	}
	return decodeResp(t, res, body)
}

// post sends frames to a session as its session event says (its post URL,
// its credential in X-Sluice-Session) and returns the answer as is.
func (e *env) post(t *testing.T, h hello, contentType, body string) *jsonResp {
	t.Helper()
	return e.request(t, http.MethodPost, h.Post, map[string]string{"Content-Type": contentType, sse.SessionHeader: h.Credential}, body)
}

// send POSTs frames as one ndjson batch and requires HTTP 200 {"status":200}.
func (e *env) send(t *testing.T, h hello, frames ...string) {
	t.Helper()
	requirePosted(t, e.post(t, h, "application/x-ndjson", strings.Join(frames, "\n")))
}

func requirePosted(t *testing.T, r *jsonResp) {
	t.Helper()
	if r.HTTPStatus != http.StatusOK || r.Status != 200 {
		t.Fatalf("POST: want HTTP 200 {status:200}, got HTTP %d %q", r.HTTPStatus, r.Body)
	}
}

// event is one SSE event block as a client parses it (WHATWG "event stream
// interpretation"), including blocks that carry only a comment or `retry:`.
type event struct {
	Name     string // the event: field; "" is an unnamed (message) event
	ID       string
	HasID    bool
	Data     string
	HasData  bool
	Retry    string
	Comments []string
	At       time.Time
}

// isFrame reports whether ev is a channel frame: an unnamed event with data.
func (ev event) isFrame() bool { return ev.Name == "" && ev.HasData }

func (ev event) String() string {
	var b strings.Builder
	for _, c := range ev.Comments {
		fmt.Fprintf(&b, ":%.20s…(%d bytes) ", c, len(c))
	}
	if ev.Retry != "" {
		fmt.Fprintf(&b, "retry=%s ", ev.Retry)
	}
	if ev.Name != "" {
		fmt.Fprintf(&b, "event=%s ", ev.Name)
	}
	if ev.HasID {
		fmt.Fprintf(&b, "id=%s ", ev.ID)
	}
	if ev.HasData {
		fmt.Fprintf(&b, "data=%s", ev.Data)
	}
	return strings.TrimSpace(b.String())
}

// parseEvents reads SSE event blocks from r and hands each to emit until r
// ends; it returns nil on a clean end (io.EOF at a block boundary).
func parseEvents(r io.Reader, emit func(event) bool) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var ev event
	var data []string
	pending := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && line == "" && !pending {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("stream ended inside an event: %q", line)
			}
			return err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if pending {
				ev.Data = strings.Join(data, "\n")
				ev.At = time.Now()
				if !emit(ev) {
					return nil
				}
			}
			ev, data, pending = event{}, nil, false
			continue
		}
		pending = true
		if strings.HasPrefix(line, ":") {
			ev.Comments = append(ev.Comments, line[1:])
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			ev.Name = value
		case "id":
			ev.ID, ev.HasID = value, true
		case "data":
			data = append(data, value)
			ev.HasData = true
		case "retry":
			ev.Retry = value
		}
	}
}

// stream is an open SSE response, parsed in the background.
type stream struct {
	resp   *http.Response
	cancel context.CancelFunc
	events chan event
	end    chan error // one value when the response ends: nil if cleanly
	done   chan struct{}
	once   sync.Once
	ended  bool
	endErr error
	opened time.Time
}

// startStream reads resp as an event stream.
func startStream(resp *http.Response, cancel context.CancelFunc, opened time.Time) *stream {
	s := &stream{resp: resp, cancel: cancel, events: make(chan event, 1024), end: make(chan error, 1), done: make(chan struct{}), opened: opened}
	go func() {
		err := parseEvents(resp.Body, func(ev event) bool {
			select {
			case s.events <- ev:
				return true
			case <-s.done:
				return false
			}
		})
		s.end <- err
	}()
	return s
}

// close drops the connection, as a client that goes away.
func (s *stream) close() {
	s.once.Do(func() {
		close(s.done)
		s.cancel()
		s.resp.Body.Close()
	})
}

// openStream GETs the stream at target with hdr, on client hc. It returns
// the response whatever its status; a 200 answer's body is parsed in the
// background and closed at the end of the test.
func openStream(t *testing.T, hc *http.Client, target string, hdr map[string]string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		cancel()
		t.Fatalf("new request: %v", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	opened := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", target, err)
	}
	s := startStream(resp, cancel, opened)
	t.Cleanup(s.close)
	return s
}

// open GETs the stream with rawQuery and requires a 200 event stream.
func (e *env) open(t *testing.T, rawQuery string, hdr map[string]string) *stream {
	t.Helper()
	s := openStream(t, streamClient(), e.srv.URL+ssePath+"?"+rawQuery, hdr)
	if s.resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(s.resp.Body)
		t.Fatalf("GET ?%s: want 200, got %d %q", rawQuery, s.resp.StatusCode, b)
	}
	if ct := s.resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("GET ?%s: want Content-Type text/event-stream, got %q", rawQuery, ct)
	}
	return s
}

// next returns the next event; ended reports that the response ended
// instead (s.endErr says how).
func (s *stream) next(t *testing.T, timeout time.Duration) (ev event, ended bool) {
	t.Helper()
	if s.ended {
		return event{}, true
	}
	select {
	case ev := <-s.events:
		return ev, false
	default:
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case ev := <-s.events:
		return ev, false
	case err := <-s.end:
		// The reader may have queued events before it ended.
		select {
		case ev := <-s.events:
			s.end <- err
			return ev, false
		default:
		}
		s.ended, s.endErr = true, err
		return event{}, true
	case <-timer.C:
		t.Fatalf("no event within %v", timeout)
	}
	return event{}, true
}

// must returns the next event and fails if the stream ended.
func (s *stream) must(t *testing.T) event {
	t.Helper()
	ev, ended := s.next(t, waitFor)
	if ended {
		t.Fatalf("the stream ended (err %v) where an event was expected", s.endErr)
	}
	return ev
}

// hello is the data of a session event.
type hello struct {
	Session    string `json:"session"`
	Credential string `json:"credential"`
	Post       string `json:"post"`
	Resumed    bool   `json:"resumed"`
	EventID    string `json:"-"` // the session event's id
}

// session reads the stream's opening: an optional padding comment, the
// retry: line, then the session event, which it returns.
func (s *stream) session(t *testing.T) hello {
	t.Helper()
	ev := s.must(t)
	if len(ev.Comments) > 0 && ev.Retry == "" && ev.Name == "" && !ev.HasData {
		ev = s.must(t) // padding
	}
	if ev.Retry == "" || ev.Name != "" || ev.HasData || ev.HasID {
		t.Fatalf("want a retry: line first, got %s", ev)
	}
	ev = s.must(t)
	if ev.Name != "session" || !ev.HasID || ev.ID == "" {
		t.Fatalf("want the session event with an id, got %s", ev)
	}
	var h hello
	if err := json.Unmarshal([]byte(ev.Data), &h); err != nil || h.Session == "" || h.Post == "" || h.Credential == "" {
		t.Fatalf("session event data: want {session, credential, post, resumed}, got %q (%v)", ev.Data, err)
	}
	h.EventID = ev.ID
	return h
}

// frames reads n channel frames, skipping heartbeats. Any other event fails.
func (s *stream) frames(t *testing.T, n int) []event {
	t.Helper()
	var out []event
	for len(out) < n {
		ev := s.must(t)
		switch {
		case ev.Name == "heartbeat":
			continue
		case !ev.isFrame():
			t.Fatalf("want a frame (%d of %d so far), got %s", len(out), n, ev)
		case !ev.HasID || ev.ID == "":
			t.Fatalf("a frame without id cannot be resumed from: %s", ev)
		}
		out = append(out, ev)
	}
	return out
}

// quiet reads until a fresh heartbeat and fails on any frame before it:
// the server sends a heartbeat only when it looked for frames and found
// none.
func (s *stream) quiet(t *testing.T) {
	t.Helper()
	if got := s.collect(t); len(got) > 0 {
		t.Fatalf("want nothing more (a heartbeat), got%s", dataOf(got))
	}
}

// freshBeat reports whether ev is a heartbeat the server wrote at least
// 10ms after since: written after a look for frames that began after since
// (a heartbeat's data is the server's clock in ms). Heartbeats read from
// the buffer, written before the caller published what it now waits for,
// prove nothing.
func freshBeat(ev event, since time.Time) bool {
	if ev.Name != "heartbeat" {
		return false
	}
	ms, err := strconv.ParseInt(ev.Data, 10, 64)
	return err == nil && ms >= since.UnixMilli()+10
}

// expect reads exactly the frames want (as JSON values, in order), then
// requires the stream to go idle. It returns the frame events.
func (s *stream) expect(t *testing.T, want ...string) []event {
	t.Helper()
	got := s.frames(t, len(want))
	for i := range want {
		if !jsonEqual(got[i].Data, want[i]) {
			t.Fatalf("frame %d mismatch\n got: %s\nwant: %s\nall: %s", i, got[i].Data, want[i], dataOf(got))
		}
	}
	s.quiet(t)
	return got
}

// collect reads frames until the stream goes idle: until a heartbeat
// written after the call began (see freshBeat).
func (s *stream) collect(t *testing.T) []event {
	t.Helper()
	since := time.Now()
	var out []event
	for {
		ev := s.must(t)
		if ev.Name == "heartbeat" {
			if freshBeat(ev, since) {
				return out
			}
			continue
		}
		if !ev.isFrame() {
			t.Fatalf("want frames or a heartbeat, got %s", ev)
		}
		out = append(out, ev)
	}
}

// waitEnd reads until the response ends and returns the events read.
func (s *stream) waitEnd(t *testing.T, timeout time.Duration) []event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var out []event
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("the stream did not end within %v", timeout)
		}
		ev, ended := s.next(t, left)
		if ended {
			return out
		}
		out = append(out, ev)
	}
}

func dataOf(evs []event) string {
	var b strings.Builder
	for _, ev := range evs {
		b.WriteString("\n  ")
		b.WriteString(ev.Data)
	}
	return b.String()
}

// connect opens a stream for user with vsn (plus extra query) and reads its
// opening, which must be a new session.
func (e *env) connect(t *testing.T, user, vsn, extra string) (*stream, hello) {
	t.Helper()
	q := streamQuery(t, user, vsn)
	if extra != "" {
		q += "&" + extra
	}
	s := e.open(t, q, nil)
	h := s.session(t)
	if h.Resumed {
		t.Fatalf("a connect without Last-Event-ID must start a new session, got resumed: %+v", h)
	}
	return s, h
}

// resume opens a stream for user resuming from lastID (in the
// Last-Event-ID header) and requires the same session back.
func (e *env) resume(t *testing.T, user, vsn, lastID, sessionID string) *stream {
	t.Helper()
	s := e.open(t, streamQuery(t, user, vsn), map[string]string{"Last-Event-ID": lastID})
	h := s.session(t)
	if !h.Resumed || h.Session != sessionID || h.EventID != lastID {
		t.Fatalf("resume from %q: want session %s resumed with the id sent back, got %+v", lastID, sessionID, h)
	}
	return s
}

// requireJoined checks the frames a V2 join of topic with join_ref = ref =
// jr brings: its reply, the presence_diff of the joiner, the presence_state.
// The reply and presence_state come from the session's mailbox, in that
// order; the presence_diff from the topic's log. A stream that polls while
// the join is being applied may deliver the diff anywhere among them (the
// gateway reads its sources one after the other), so only the mailbox order
// is required here; resumes, which read everything at once, are held to the
// exact order elsewhere.
func requireJoined(t *testing.T, got []event, topic, jr, user string) {
	t.Helper()
	if len(got) != 3 {
		t.Fatalf("join %s: want reply, presence_diff, presence_state; got %s", topic, dataOf(got))
	}
	reply, diff, state := -1, -1, -1
	for i, ev := range got {
		f := decodeV2(t, ev.Data)
		switch f.Event {
		case "phx_reply":
			requireFrame(t, ev.Data, `["`+jr+`","`+jr+`","`+topic+`","phx_reply",{"response":{"joined":"`+topic+`"},"status":"ok"}]`)
			reply = i
		case "presence_diff":
			if f.JoinRef != nil || f.Ref != nil || f.Topic != topic || !strings.Contains(string(f.Payload), `"joins":{"`+user+`"`) {
				t.Fatalf("join %s: want a presence_diff joining %s, got %s", topic, user, ev.Data)
			}
			diff = i
		case "presence_state":
			if f.JoinRef == nil || *f.JoinRef != jr || f.Ref != nil || f.Topic != topic || !strings.Contains(string(f.Payload), `"`+user+`"`) {
				t.Fatalf("join %s: want presence_state with join_ref %s listing %s, got %s", topic, jr, user, ev.Data)
			}
			state = i
		}
	}
	if reply < 0 || diff < 0 || state < 0 || reply > state {
		t.Fatalf("join %s: want the reply, a presence_diff, and presence_state after the reply; got %s", topic, dataOf(got))
	}
}

// source names the broker log a V2 frame came from: a topic's log for a
// broadcast (join_ref and ref null), else the session's mailbox.
func source(t *testing.T, data string) string {
	f := decodeV2(t, data)
	if f.JoinRef == nil && f.Ref == nil {
		return "topic " + f.Topic
	}
	return "mailbox"
}

// expectInterleaved reads len(want) frames: the frames want, each log's
// frames in want's order, the logs interleaved in any way (one POST's
// effects go to several logs, which a polling stream may read between
// publications). Then the stream must go idle.
func (s *stream) expectInterleaved(t *testing.T, want ...string) []event {
	t.Helper()
	got := s.frames(t, len(want))
	bySource := map[string][]string{}
	for _, w := range want {
		bySource[source(t, w)] = append(bySource[source(t, w)], w)
	}
	for _, ev := range got {
		src := source(t, ev.Data)
		q := bySource[src]
		if len(q) == 0 || !jsonEqual(ev.Data, q[0]) {
			t.Fatalf("frame %s: not the next one expected from %s (want %v)\nall:%s", ev.Data, src, q, dataOf(got))
		}
		bySource[src] = q[1:]
	}
	s.quiet(t)
	return got
}

// jsonEqual reports whether two JSON texts hold the same value.

// The frame helpers shared with the other transport's tests.
var (
	jsonEqual    = testroom.JSONEqual
	requireFrame = testroom.RequireFrame
	decodeV2     = testroom.DecodeV2
)

// news is the V2 frame of a gw.Broadcast of "news" {"n": n} on topic.
func news(topic string, n int) string {
	return fmt.Sprintf(`[null,null,%q,"news",{"n":%d}]`, topic, n)
}

// broadcast publishes "news" {"n": n} on topic through the gateway, as an
// application would.
func (e *env) broadcast(t *testing.T, topic string, n int) {
	t.Helper()
	if err := e.gw.Broadcast(context.Background(), topic, "news", map[string]int{"n": n}); err != nil {
		t.Fatalf("Broadcast: %v", err)
	}
}

// ping is a V2 ping frame and pingReply its answer.
func ping(jr, ref, topic string) string {
	return fmt.Sprintf(`[%q,%q,%q,"ping",{"ref":%q}]`, jr, ref, topic, ref)
}

func pingReply(jr, ref, topic string) string {
	return fmt.Sprintf(`[%q,%q,%q,"phx_reply",{"response":{"ref":%q},"status":"ok"}]`, jr, ref, topic, ref)
}

// streamHandlers counts the goroutines running the transport's stream
// handler.
func streamHandlers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	// A parked stream has no handler but one goroutine watching its client.
	return strings.Count(string(buf), "sluice/sse.(*Transport).stream(") + strings.Count(string(buf), "sluice/sse.(*parked).watchClient(")
}

// handlerWait is how long waitHandlers waits at most: generous, since a
// loaded machine (CI runs -race beside other suites) can take a while to
// end a goroutine; a passing wait returns as soon as the count is right.
const handlerWait = 10 * time.Second

// waitHandlers waits until exactly n stream handlers run.
func waitHandlers(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := streamHandlers()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d stream handler goroutines, still %d after %v", n, got, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
