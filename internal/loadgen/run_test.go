package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"go.uber.org/goleak"

	"github.com/sluicegw/sluice/cmd/sluice/chat"
	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/longpoll"
	"github.com/sluicegw/sluice/sse"
	"github.com/sluicegw/sluice/topics"
	"github.com/sluicegw/sluice/websocket"
)

func TestMain(m *testing.M) {
	// The WebSocket transport's idle poller lives as long as the process.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(websocket.IdlePollerLoop))
}

const (
	testSecret = "loadgen-test-secret-0123456789abcdef"
	testAPIKey = "test-key"
)

// receiveOnly is the handler of the test server's open topics, bench:*.
type receiveOnly struct{}

func (receiveOnly) Join(*gateway.Context, json.RawMessage) gateway.Reply { return gateway.Ok(nil) }

func (receiveOnly) HandleIn(*gateway.Context, string, json.RawMessage) gateway.Reply {
	return gateway.Error(map[string]string{"reason": "receive-only"})
}

// newTestServer starts a gateway with the three transports, bench:* open topics,
// the chat app and the API routes the tool uses, as `sluice serve` wires
// them. SSE streams end every 700 ms, so that runs exercise resuming.
func newTestServer(t *testing.T) *httptest.Server {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	store := gateway.NewMemoryStore()
	app := chat.New(chat.NewMemoryStore(500))
	router := &topics.Router[gateway.Handler]{}
	router.Add("bench:*", receiveOnly{})
	app.Register(router)
	gw, err := gateway.New(gateway.Config{
		Router:       router,
		Authenticate: gateway.TokenAuthenticator(testSecret, time.Hour),
		Sessions:     store,
		Presence:     store,
		Broker:       topics.NewMemoryBroker(1000, time.Hour),
		Logger:       log,
	})
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	sse.New(gw, sse.Config{Retry: 100 * time.Millisecond, Heartbeat: 200 * time.Millisecond, MaxLifetime: 700 * time.Millisecond, Logger: log}).Register(e, "/socket/sse")
	longpoll.New(gw, longpoll.Config{Window: 300 * time.Millisecond, Logger: log}).Register(e, "/socket/longpoll")
	ws := websocket.New(gw, websocket.Config{Logger: log})
	ws.Register(e, "/socket/websocket")
	api := e.Group("/api", func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if c.Request().Header.Get("Authorization") != "Bearer "+testAPIKey {
				return echo.NewHTTPError(http.StatusUnauthorized, "bad key")
			}
			return next(c)
		}
	})
	api.POST("/broadcast", func(c echo.Context) error {
		var req struct {
			Topic, Event string
			Payload      json.RawMessage
		}
		if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, err.Error())
		}
		if err := gw.Broadcast(c.Request().Context(), req.Topic, req.Event, req.Payload); err != nil {
			return err
		}
		return c.JSON(http.StatusOK, map[string]bool{"ok": true})
	})
	app.RegisterAPI(api)
	srv := httptest.NewServer(e)
	t.Cleanup(func() { ws.Close(); srv.Close() })
	return srv
}

// testConfig is a short run against url.
func testConfig(url string) Config {
	c := DefaultConfig()
	c.URLs = []string{url}
	c.Secret, c.APIKey = testSecret, testAPIKey
	c.Ramp, c.Settle, c.Duration, c.Drain = 100*time.Millisecond, 50*time.Millisecond, 700*time.Millisecond, 3*time.Second
	c.ConnectTimeout = 5 * time.Second
	c.PollTimeout = 5 * time.Second
	c.SourceAddrs = 4
	c.PIDs = nil
	return c
}

func checkClean(t *testing.T, rep *Report) {
	t.Helper()
	if !rep.OK || rep.Missed != 0 || rep.Duplicated != 0 || rep.OutOfOrder != 0 || rep.Delivered != rep.Expected || rep.Delivered == 0 {
		var b strings.Builder
		_ = rep.WriteText(&b)
		t.Errorf("the run was not clean:\n%s", b.String())
	}
}

func TestRunBroadcastMix(t *testing.T) {
	srv := newTestServer(t)
	cfg := testConfig(srv.URL)
	cfg.Transport = TransportMix
	cfg.Clients, cfg.Topics, cfg.Joins = 40, 3, 2
	cfg.Rate, cfg.Publishers, cfg.PayloadBytes = 60, 3, 200
	// A fixed amount of work, not what fits in a window on a loaded
	// machine: 90 messages at 60/s take at least 1.45 s, longer than the
	// streams' 700 ms lifetime, so streams are resumed mid-run.
	cfg.Messages, cfg.Duration = 90, time.Minute
	cfg.PIDs = []int{os.Getpid()}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkClean(t, rep)
	if rep.Connected != 40 || rep.ConnectedSSE != 14 || rep.ConnectedLP != 13 || rep.ConnectedWS != 13 || rep.Failed != 0 {
		t.Errorf("connected %d (sse %d, longpoll %d, websocket %d), failed %d", rep.Connected, rep.ConnectedSSE, rep.ConnectedLP, rep.ConnectedWS, rep.Failed)
	}
	// Round robin over 3 topics: 30 messages each; topics 0 and 1 are
	// joined by 27 clients, topic 2 by 26.
	if rep.Sent != 90 || rep.Expected != 30*27+30*27+30*26 {
		var b strings.Builder
		_ = rep.WriteText(&b)
		t.Errorf("sent %d, expected %d; want 90 sent and %d expected\n%s\n%+v", rep.Sent, rep.Expected, 30*27+30*27+30*26, b.String(), rep.Errors)
	}
	if rep.WindowSeconds >= 50 {
		t.Errorf("the window lasted %.1fs: it must end once --messages were sent, not at --duration", rep.WindowSeconds)
	}
	if rep.Reconnects == 0 {
		t.Error("no SSE stream was resumed, though the server ends them every 700 ms")
	}
	if rep.RoundTrips == 0 || rep.Latency.Count != uint64(rep.Delivered) || rep.Latency.P99 <= 0 {
		t.Errorf("round trips %d, latency %+v", rep.RoundTrips, rep.Latency)
	}
	if rep.Server == nil || rep.Server.RSSEndBytes <= 0 {
		t.Errorf("server stats %+v", rep.Server)
	}
	var b strings.Builder
	if err := rep.WriteJSON(&b); err != nil || !json.Valid([]byte(b.String())) {
		t.Errorf("WriteJSON: %v", err)
	}
}

func TestRunBroadcastWebSocket(t *testing.T) {
	srv := newTestServer(t)
	cfg := testConfig(srv.URL)
	cfg.Transport = TransportWebSocket
	cfg.Clients, cfg.Topics, cfg.Joins = 30, 2, 2
	cfg.Rate, cfg.Publishers = 40, 2
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkClean(t, rep)
	if rep.Connected != 30 || rep.ConnectedWS != 30 || rep.Failed != 0 {
		t.Errorf("connected %d (websocket %d), failed %d", rep.Connected, rep.ConnectedWS, rep.Failed)
	}
	if rep.Expected != rep.Sent*30 {
		t.Errorf("expected %d for %d sent to 30 clients", rep.Expected, rep.Sent)
	}
}

func TestRunChat(t *testing.T) {
	srv := newTestServer(t)
	cfg := testConfig(srv.URL)
	cfg.Scenario, cfg.TopicPattern = ScenarioChat, chatPattern
	cfg.Transport = TransportMix
	cfg.Clients, cfg.Topics = 20, 4
	cfg.Rate, cfg.PushShare = 40, 0.5
	cfg.Messages, cfg.Duration = 24, time.Minute
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkClean(t, rep)
	if rep.Publishers != 10 || rep.Sent != 24 {
		t.Errorf("%d pushers sent %d; want 10 pushers and 24 messages", rep.Publishers, rep.Sent)
	}
	// 5 clients per room, each message to every member, the pusher too.
	if rep.Expected != rep.Sent*5 {
		t.Errorf("expected %d for %d sent", rep.Expected, rep.Sent)
	}
}

func TestRunIdleWithRefusedClients(t *testing.T) {
	srv := newTestServer(t)
	cfg := testConfig(srv.URL)
	cfg.Scenario = ScenarioIdle
	cfg.Transport = TransportMix
	cfg.Clients = 6
	cfg.TopicPattern = "nope:%d" // no such topic: every join is refused
	cfg.Duration = 100 * time.Millisecond
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep.OK || rep.Failed != 6 || rep.FailedByKind["join_refused"].Count != 6 {
		t.Errorf("ok %v, failed %d by kind %v", rep.OK, rep.Failed, rep.FailedByKind)
	}
	if !strings.Contains(rep.FailedByKind["join_refused"].Example, "unmatched topic") {
		t.Errorf("example %q", rep.FailedByKind["join_refused"].Example)
	}
	// The report names the server flag that is missing.
	var b strings.Builder
	_ = rep.WriteText(&b)
	if !strings.Contains(b.String(), "start it with --open-topics 'nope:*'") {
		t.Errorf("the report does not say which server flag is missing:\n%s", b.String())
	}
}

// TestRunAgainstABadServer: a server that sends every message twice, with
// a malformed frame and junk after each, must be reported, not crash the
// tool.
func TestRunAgainstABadServer(t *testing.T) {
	var (
		mu      sync.Mutex
		streams []chan string
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /socket/sse", func(w http.ResponseWriter, r *http.Request) {
		ch := make(chan string, 100)
		mu.Lock()
		streams = append(streams, ch)
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "retry: 100\n\nevent: session\nid: s.1\ndata: {\"credential\":\"s-key\",\"post\":\"/socket/sse\",\"resumed\":false,\"session\":\"s\"}\n\n")
		fmt.Fprintf(w, "id: s.2\ndata: [\"join:1\",\"join:1\",\"bench:0\",\"phx_reply\",{\"response\":{},\"status\":\"ok\"}]\n\n")
		pumpEvents(w, r, ch)
	})
	mux.HandleFunc("POST /api/broadcast", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Topic, Event string
			Payload      json.RawMessage
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		frame := fmt.Sprintf(`[null,null,%q,%q,%s]`, req.Topic, req.Event, req.Payload)
		ev := "data: " + frame + "\n\ndata: " + frame + "\n\ndata: [\"x\",\n\nevent: \ndata: {\x00}\n\n: comment\n\n"
		mu.Lock()
		for _, ch := range streams {
			ch <- ev
		}
		mu.Unlock()
		fmt.Fprint(w, `{"ok":true}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cfg := testConfig(srv.URL)
	cfg.Clients, cfg.Rate, cfg.Drain = 5, 20, 300*time.Millisecond
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep.OK || rep.Sent == 0 || rep.Duplicated != rep.Sent*5 || rep.Missed != 0 || rep.Errors["bad_frame"].Count < rep.Sent*5 {
		var b strings.Builder
		_ = rep.WriteText(&b)
		t.Errorf("want every message duplicated and bad frames counted:\n%s", b.String())
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	srv := newTestServer(t)
	cfg := testConfig(srv.URL)
	cfg.Clients, cfg.Duration = 4, time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(700*time.Millisecond, cancel)
	start := time.Now()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %v after a cancel", d)
	}
	if !rep.Interrupted || rep.OK || rep.Missed != 0 || rep.Delivered == 0 {
		t.Errorf("interrupted %v ok %v missed %d delivered %d", rep.Interrupted, rep.OK, rep.Missed, rep.Delivered)
	}
}

// TestRunRejoinsAfterPhxError: a channel the server errors (as when a
// client falls behind the retained history) is joined again, by POST, and
// keeps receiving.
func TestRunRejoinsAfterPhxError(t *testing.T) {
	var (
		mu      sync.Mutex
		streams = map[string]chan string{}
		joins   int
		errored bool
	)
	send := func(session, ev string) {
		mu.Lock()
		defer mu.Unlock()
		if ch := streams[session]; ch != nil {
			ch <- ev
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /socket/sse", func(w http.ResponseWriter, r *http.Request) {
		ch := make(chan string, 100)
		mu.Lock()
		session := fmt.Sprintf("s%d", len(streams))
		streams[session] = ch
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "event: session\nid: %s.1\ndata: {\"credential\":\"%s-key\",\"post\":\"/socket/sse\",\"resumed\":false,\"session\":%q}\n\n", session, session, session)
		fmt.Fprintf(w, "data: [\"join:1\",\"join:1\",\"bench:0\",\"phx_reply\",{\"response\":{},\"status\":\"ok\"}]\n\n")
		pumpEvents(w, r, ch)
	})
	mux.HandleFunc("POST /socket/sse", func(w http.ResponseWriter, r *http.Request) {
		var frames [][5]json.RawMessage
		if err := json.NewDecoder(r.Body).Decode(&frames); err != nil || len(frames) != 1 || string(frames[0][3]) != `"phx_join"` {
			t.Errorf("POST: %v %v", frames, err)
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		mu.Lock()
		joins++
		mu.Unlock()
		ref := frames[0][1]
		send(strings.TrimSuffix(r.Header.Get("X-Sluice-Session"), "-key"), fmt.Sprintf("data: [%s,%s,\"bench:0\",\"phx_reply\",{\"response\":{},\"status\":\"ok\"}]\n\n", ref, ref))
		fmt.Fprint(w, `{"status":200}`)
	})
	mux.HandleFunc("POST /api/broadcast", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Topic, Event string
			Payload      json.RawMessage
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		first := !errored
		errored = true
		var sessions []string
		for s := range streams {
			sessions = append(sessions, s)
		}
		mu.Unlock()
		for _, s := range sessions {
			if first {
				send(s, "data: [\"join:1\",\"join:1\",\"bench:0\",\"phx_error\",{\"reason\":\"missed messages\"}]\n\n")
			}
			send(s, fmt.Sprintf("data: [null,null,%q,%q,%s]\n\n", req.Topic, req.Event, req.Payload))
		}
		fmt.Fprint(w, `{"ok":true}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cfg := testConfig(srv.URL)
	cfg.Clients, cfg.Rate, cfg.Publishers, cfg.Duration = 3, 10, 1, 1300*time.Millisecond
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if joins != 3 || rep.Rejoins != 3 || rep.Errors["sse/phx_error"].Count != 3 || rep.JoinedAtEnd != 3 {
		var b strings.Builder
		_ = rep.WriteText(&b)
		t.Errorf("%d join POSTs; want each client to rejoin once:\n%s", joins, b.String())
	}
}

// pumpEvents writes what ch carries to a fake stream until its client goes.
func pumpEvents(w http.ResponseWriter, r *http.Request, ch <-chan string) {
	w.(http.Flusher).Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-ch:
			io.WriteString(w, ev)
			w.(http.Flusher).Flush()
		}
	}
}
