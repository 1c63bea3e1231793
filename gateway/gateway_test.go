package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicegw/sluice/topics"
)

// testRoom is a channel handler exercising every callback.
type testRoom struct{}

func (testRoom) Join(c *Context, payload json.RawMessage) Reply {
	switch c.Topic() {
	case "room:forbidden":
		return Error(map[string]string{"reason": "unauthorized"})
	case "room:crash":
		panic("join exploded")
	case "room:stop":
		return Ok(nil).Stop()
	}
	var p struct {
		Levels []string `json:"levels"`
	}
	_ = json.Unmarshal(payload, &p)
	_ = c.Assign("levels", p.Levels)
	return Ok(map[string]string{"joined": c.Topic()})
}

func (testRoom) AfterJoin(c *Context) error {
	if err := c.Track(c.UserKey(), map[string]string{"status": "active"}); err != nil {
		return err
	}
	list, err := c.PresenceList()
	if err != nil {
		return err
	}
	return c.Push(EventPresenceState, list)
}

func (testRoom) HandleIn(c *Context, event string, payload json.RawMessage) Reply {
	switch event {
	case "ping":
		return Ok(payload)
	case "shout":
		_ = c.Broadcast("shouted", payload)
		return Ok(nil)
	case "whisper":
		_ = c.BroadcastFrom("whispered", payload)
		return NoReply
	case "away":
		if err := c.UpdatePresence(c.UserKey(), map[string]string{"status": "away"}); err != nil {
			return Error(map[string]string{"reason": err.Error()})
		}
		return Ok(nil)
	case "boom":
		panic("handle_in exploded")
	case "bye":
		return Ok(nil).Stop()
	}
	return Error(map[string]string{"reason": "unknown event"})
}

func (testRoom) Intercepts() []string { return []string{"alert"} }

func (testRoom) HandleOut(c *Context, event string, payload json.RawMessage) error {
	var p struct {
		Level string `json:"level"`
	}
	_ = json.Unmarshal(payload, &p)
	var levels []string
	c.Assigned("levels", &levels)
	for _, l := range levels {
		if l == p.Level {
			return c.Push(event, payload)
		}
	}
	return nil
}

type harness struct {
	t      *testing.T
	gw     *Gateway
	store  *MemoryStore
	broker *topics.MemoryBroker
}

func newHarness(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	router := &topics.Router[Handler]{}
	router.Add("room:*", testRoom{})
	h := &harness{t: t, store: NewMemoryStore(), broker: topics.NewMemoryBroker(100, time.Hour)}
	cfg := Config{
		Router:   router,
		Sessions: h.store, Presence: h.store, Broker: h.broker,
		Authenticate: func(_ context.Context, info ConnectInfo) (Identity, error) {
			if info.Token == "" {
				return Identity{}, fmt.Errorf("no token")
			}
			return Identity{UserID: json.RawMessage(info.Token)}, nil
		},
		SessionTimeout: time.Minute,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	gw, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.gw = gw
	return h
}

// client is one session driven through the gateway API.
type client struct {
	h   *harness
	tok SessionToken
}

func (h *harness) connect(user, vsn string) *client {
	h.t.Helper()
	tok, err := h.gw.Connect(context.Background(), ConnectInfo{Token: user, Vsn: vsn})
	if err != nil {
		h.t.Fatal(err)
	}
	return &client{h: h, tok: tok}
}

func (c *client) send(frames ...string) {
	c.h.t.Helper()
	bs := make([][]byte, len(frames))
	for i, f := range frames {
		bs[i] = []byte(f)
	}
	if err := c.h.gw.Handle(context.Background(), c.tok.SessionID, bs); err != nil {
		c.h.t.Fatalf("Handle(%v): %v", frames, err)
	}
}

// poll returns the pending frames (waiting briefly) and acknowledges them.
func (c *client) poll() []string {
	c.h.t.Helper()
	d, err := c.h.gw.Poll(context.Background(), c.tok, 20*time.Millisecond)
	if err != nil {
		c.h.t.Fatalf("Poll: %v", err)
	}
	c.tok = d.Token
	out := make([]string, len(d.Frames))
	for i, f := range d.Frames {
		out[i] = string(f)
	}
	return out
}

func expectFrames(t *testing.T, got []string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d:\n got: %s\nwant: %s", len(got), len(want), strings.Join(got, "\n      "), strings.Join(want, "\n      "))
	}
	for i := range want {
		if !frameMatches(got[i], want[i]) {
			t.Errorf("frame %d:\n got: %s\nwant: %s", i, got[i], want[i])
		}
	}
}

// frameMatches compares frames, where "*" in want matches any JSON value.
func frameMatches(got, want string) bool {
	if want == got {
		return true
	}
	var g, w any
	if json.Unmarshal([]byte(got), &g) != nil || json.Unmarshal([]byte(want), &w) != nil {
		return false
	}
	return jsonMatches(g, w)
}

func jsonMatches(g, w any) bool {
	if w == "*" {
		return true
	}
	switch wv := w.(type) {
	case map[string]any:
		gv, ok := g.(map[string]any)
		if !ok || len(gv) != len(wv) {
			return false
		}
		for k := range wv {
			if !jsonMatches(gv[k], wv[k]) {
				return false
			}
		}
		return true
	case []any:
		gv, ok := g.([]any)
		if !ok || len(gv) != len(wv) {
			return false
		}
		for i := range wv {
			if !jsonMatches(gv[i], wv[i]) {
				return false
			}
		}
		return true
	}
	return fmt.Sprint(g) == fmt.Sprint(w)
}

func TestJoinLifecycle(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`)
	expectFrames(t, a.poll(),
		`["1","1","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`,
		`[null,null,"room:a","presence_diff",{"joins":{"1":{"metas":[{"status":"active","phx_ref":"*"}]}},"leaves":{}}]`,
		`["1",null,"room:a","presence_state",{"1":{"metas":[{"status":"active","phx_ref":"*"}]}}]`)

	a.send(`["1","2","room:a","ping",{"n":1}]`, `[null,"3","phoenix","heartbeat",{}]`, `["1","4","room:b","ping",{}]`, `["1","5","room:a","nope",{}]`)
	expectFrames(t, a.poll(),
		`["1","2","room:a","phx_reply",{"response":{"n":1},"status":"ok"}]`,
		`[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]`,
		`[null,"4","room:b","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`,
		`["1","5","room:a","phx_reply",{"response":{"reason":"unknown event"},"status":"error"}]`)

	// Stale join_ref: dropped silently; null join_ref: accepted.
	a.send(`["0","6","room:a","ping",{}]`, `[null,"7","room:a","ping",{}]`)
	expectFrames(t, a.poll(), `["1","7","room:a","phx_reply",{"response":{},"status":"ok"}]`)

	// Duplicate join: new reply, then the old channel's phx_close.
	a.send(`["8","8","room:a","phx_join",{}]`)
	got := a.poll()
	expectFrames(t, got[:2],
		`["8","8","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`,
		`["1","1","room:a","phx_close",{}]`)

	// Leave: reply then phx_close; then the topic is unjoined.
	a.send(`["8","9","room:a","phx_leave",{}]`, `["8","10","room:a","ping",{}]`, `["x","11","room:z","phx_leave",{}]`)
	expectFrames(t, a.poll(),
		`["8","9","room:a","phx_reply",{"response":{},"status":"ok"}]`,
		`["8","8","room:a","phx_close",{}]`,
		`[null,"10","room:a","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`,
		`["x","11","room:z","phx_reply",{"response":{},"status":"ok"}]`)
}

func TestJoinRefusedCrashedStoppedUnmatched(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	a.send(`["1","1","room:forbidden","phx_join",{}]`, `["2","2","room:crash","phx_join",{}]`, `["3","3","lobby","phx_join",{}]`, `["4","4","room:stop","phx_join",{}]`)
	expectFrames(t, a.poll(),
		`["1","1","room:forbidden","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]`,
		`["2","2","room:crash","phx_reply",{"response":{"reason":"join crashed"},"status":"error"}]`,
		`[null,"3","lobby","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`,
		`["4","4","room:stop","phx_reply",{"response":{},"status":"ok"}]`,
		`["4","4","room:stop","phx_close",{}]`)
	s, _ := h.store.Load(context.Background(), a.tok.SessionID)
	if len(s.Channels) != 0 {
		t.Errorf("refused, crashed and stopped joins left channels: %v", s.Channels)
	}
}

func TestCrashAndStop(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	b := h.connect("2", "2.0.0")
	b.send(`["1","1","room:a","phx_join",{}]`)
	b.poll()
	a.send(`["1","1","room:a","phx_join",{}]`, `["2","2","room:b","phx_join",{}]`)
	a.poll()
	b.poll()
	a.send(`["1","3","room:a","boom",{}]`, `["1","4","room:a","ping",{}]`, `["2","5","room:b","ping",{}]`)
	expectFrames(t, a.poll(),
		`["1","1","room:a","phx_error",{"reason":"channel_crash"}]`,
		`[null,"4","room:a","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`,
		`["2","5","room:b","phx_reply",{"response":{},"status":"ok"}]`)
	// The crashed channel's presence left.
	expectFrames(t, b.poll(), `[null,null,"room:a","presence_diff",{"joins":{},"leaves":{"1":{"metas":[{"status":"active","phx_ref":"*"}]}}}]`)

	a.send(`["2","6","room:b","bye",{}]`)
	expectFrames(t, a.poll(),
		`["2","6","room:b","phx_reply",{"response":{},"status":"ok"}]`,
		`["2","2","room:b","phx_close",{}]`)
}

func TestBroadcastFromAndIntercept(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	a2 := h.connect("1", "2.0.0") // the same user in another tab
	b := h.connect("2", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{"levels":["high"]}]`)
	a2.send(`["1","1","room:a","phx_join",{"levels":["low"]}]`)
	b.send(`["1","1","room:a","phx_join",{}]`)
	for _, c := range []*client{a, a2, b} {
		c.poll()
	}
	a.send(`["1","2","room:a","whisper",{"w":1}]`)
	expectFrames(t, a.poll())
	expectFrames(t, a2.poll(), `[null,null,"room:a","whispered",{"w":1}]`)
	expectFrames(t, b.poll(), `[null,null,"room:a","whispered",{"w":1}]`)

	if err := h.gw.Broadcast(context.Background(), "room:a", "alert", map[string]string{"level": "high"}); err != nil {
		t.Fatal(err)
	}
	if err := h.gw.Broadcast(context.Background(), "room:a", "news", map[string]string{"n": "x"}); err != nil {
		t.Fatal(err)
	}
	// Intercepted: pushed with join_ref to the subscriber whose filter takes it.
	expectFrames(t, a.poll(), `["1",null,"room:a","alert",{"level":"high"}]`, `[null,null,"room:a","news",{"n":"x"}]`)
	expectFrames(t, a2.poll(), `[null,null,"room:a","news",{"n":"x"}]`)
	expectFrames(t, b.poll(), `[null,null,"room:a","news",{"n":"x"}]`)
}

func TestPresenceSeveralMetasUpdateAndExpiry(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SessionTimeout = 10 * time.Millisecond })
	a := h.connect("1", "2.0.0")
	a2 := h.connect("1", "2.0.0")
	b := h.connect("2", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`)
	a.poll()
	a2.send(`["1","1","room:a","phx_join",{}]`)
	got := a2.poll()
	expectFrames(t, got[2:], `["1",null,"room:a","presence_state",{"1":{"metas":[{"status":"active","phx_ref":"*"},{"status":"active","phx_ref":"*"}]}}]`)

	b.send(`["1","1","room:a","phx_join",{}]`)
	b.poll()
	a.poll()
	a.send(`["1","2","room:a","away",{}]`)
	got = b.poll()
	expectFrames(t, got, `[null,null,"room:a","presence_diff",{"joins":{"1":{"metas":[{"status":"away","phx_ref":"*","phx_ref_prev":"*"}]}},"leaves":{"1":{"metas":[{"status":"active","phx_ref":"*"}]}}}]`)
	var diff struct {
		Joins, Leaves map[string]struct {
			Metas []map[string]string `json:"metas"`
		}
	}
	var frame []json.RawMessage
	_ = json.Unmarshal([]byte(got[0]), &frame)
	_ = json.Unmarshal(frame[4], &diff)
	if j, l := diff.Joins["1"].Metas[0], diff.Leaves["1"].Metas[0]; j["phx_ref_prev"] != l["phx_ref"] || j["phx_ref"] == l["phx_ref"] {
		t.Errorf("update diff refs: join %v, leave %v", j, l)
	}

	// a stops polling and expires; concurrent expiry runs announce it once.
	time.Sleep(30 * time.Millisecond)
	if _, err := h.store.Touch(context.Background(), b.tok.SessionID, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.Touch(context.Background(), a2.tok.SessionID, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { _, _ = h.gw.ExpireSessions(context.Background()) })
	}
	wg.Wait()
	expectFrames(t, b.poll(), `[null,null,"room:a","presence_diff",{"joins":{},"leaves":{"1":{"metas":[{"status":"away","phx_ref":"*","phx_ref_prev":"*"}]}}}]`)
	if _, err := h.gw.Poll(context.Background(), a.tok, time.Millisecond); err != ErrNoSession {
		t.Errorf("poll of expired session: %v, want ErrNoSession", err)
	}
}

func TestRetriedPollGetsSameFrames(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`)
	first := a.tok
	d1, err := h.gw.Poll(context.Background(), first, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := h.gw.Poll(context.Background(), first, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(d1.Frames) != 3 || fmt.Sprint(d1.Frames) != fmt.Sprint(d2.Frames) || d1.Token.String() != d2.Token.String() {
		t.Fatalf("retried poll differs:\n%s\n%s", d1.Frames, d2.Frames)
	}
	d3, err := h.gw.Poll(context.Background(), d1.Token, time.Millisecond)
	if err != nil || len(d3.Frames) != 0 {
		t.Fatalf("poll with the acknowledging token got %d frames (%v)", len(d3.Frames), err)
	}
}

func TestDuplicateRefIgnored(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`)
	a.poll()
	a.send(`["1","2","room:a","shout",{"n":1}]`)
	a.send(`["1","2","room:a","shout",{"n":1}]`) // a proxy replays the POST
	expectFrames(t, a.poll(), `[null,null,"room:a","shouted",{"n":1}]`, `["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]`)
}

func TestMaxChannels(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxChannels = 2 })
	a := h.connect("1", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`, `["2","2","room:b","phx_join",{}]`, `["3","3","room:c","phx_join",{}]`, `["4","4","room:a","phx_join",{}]`)
	var last []string
	for _, f := range a.poll() {
		if strings.Contains(f, "phx_reply") {
			last = append(last, f)
		}
	}
	expectFrames(t, last,
		`["1","1","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`,
		`["2","2","room:b","phx_reply",{"response":{"joined":"room:b"},"status":"ok"}]`,
		`["3","3","room:c","phx_reply",{"response":{"reason":"too many channels joined"},"status":"error"}]`,
		`["4","4","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`)
}

func TestFellBehindHistoryGetsError(t *testing.T) {
	h := newHarness(t, nil)
	h.broker = topics.NewMemoryBroker(5, time.Hour)
	h.gw.cfg.Broker = h.broker
	a := h.connect("1", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`)
	a.poll()
	for i := range 10 {
		if err := h.gw.Broadcast(context.Background(), "room:a", "n", map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	expectFrames(t, a.poll(), `["1","1","room:a","phx_error",{"reason":"missed messages"}]`)
	if err := h.gw.Broadcast(context.Background(), "room:a", "n", map[string]int{"i": 10}); err != nil {
		t.Fatal(err)
	}
	expectFrames(t, a.poll(), `[null,null,"room:a","n",{"i":10}]`)
}

func TestBatchWithBadFrameAppliesNothing(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	err := h.gw.Handle(context.Background(), a.tok.SessionID, [][]byte{[]byte(`["1","1","room:a","phx_join",{}]`), []byte(`["1","2","room:a"]`)})
	var be *BatchError
	if !asBatchError(err, &be) || be.Index != 1 {
		t.Fatalf("Handle error = %v, want BatchError at index 1", err)
	}
	expectFrames(t, a.poll())
	if err := h.gw.Handle(context.Background(), "0123456789abcdef0123456789abcdef", [][]byte{[]byte(`[null,"1","phoenix","heartbeat",{}]`)}); err != ErrNoSession {
		t.Errorf("Handle of unknown session: %v", err)
	}
}

func asBatchError(err error, dst **BatchError) bool {
	be, ok := err.(*BatchError)
	*dst = be
	return ok
}

func TestV1SessionNeverSendsJoinRef(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "1.0.0")
	a.send(`{"topic":"room:a","event":"phx_join","payload":{},"ref":"1"}`, `{"topic":"room:a","event":"ping","payload":{"x":1},"ref":"2"}`)
	expectFrames(t, a.poll(),
		`{"topic":"room:a","event":"phx_reply","payload":{"response":{"joined":"room:a"},"status":"ok"},"ref":"1"}`,
		`{"topic":"room:a","event":"presence_diff","payload":{"joins":{"1":{"metas":[{"status":"active","phx_ref":"*"}]}},"leaves":{}},"ref":null}`,
		`{"topic":"room:a","event":"presence_state","payload":{"1":{"metas":[{"status":"active","phx_ref":"*"}]}},"ref":null}`,
		`{"topic":"room:a","event":"phx_reply","payload":{"response":{"x":1},"status":"ok"},"ref":"2"}`)
}

func TestPollWakesOnMessage(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	b := h.connect("2", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`)
	a.poll()
	b.send(`["1","1","room:a","phx_join",{}]`)
	b.poll()
	a.poll()
	done := make(chan *Delivery)
	go func() {
		d, _ := h.gw.Poll(context.Background(), a.tok, 10*time.Second)
		done <- d
	}()
	time.Sleep(10 * time.Millisecond)
	b.send(`["1","2","room:a","shout",{"hi":1}]`)
	select {
	case d := <-done:
		if len(d.Frames) != 1 || !strings.Contains(string(d.Frames[0]), "shouted") {
			t.Fatalf("woken poll got %s", d.Frames)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiting poll was not woken by a broadcast")
	}
}

func TestMergeByTimeKeepsEachSourceInOrder(t *testing.T) {
	// Mailbox records made on an instance whose clock runs behind: their
	// times go backwards, yet their order must hold.
	in := []timedFrame{
		{time: 100, frame: []byte("m1"), slot: -1, seq: 1},
		{time: 90, frame: []byte("m2"), slot: -1, seq: 2},
		{time: 95, frame: []byte("t1"), slot: 0, seq: 7},
		{time: 200, frame: []byte("t2"), slot: 0, seq: 8},
		{time: 50, frame: []byte("u1"), slot: 1, seq: 3},
	}
	var got []string
	for _, f := range mergeByTime(in) {
		got = append(got, string(f.frame))
	}
	if want := "u1 t1 m1 m2 t2"; strings.Join(got, " ") != want {
		t.Errorf("merge = %v, want %s", got, want)
	}
}

func TestPerFrameTokensResumeExactly(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`, `["1","2","room:a","shout",{"n":1}]`, `["1","3","room:a","shout",{"n":2}]`)
	d, err := h.gw.Poll(context.Background(), a.tok, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Tokens) != len(d.Frames) || len(d.Frames) < 5 {
		t.Fatalf("%d frames, %d tokens", len(d.Frames), len(d.Tokens))
	}
	// Resuming from the token of frame i delivers exactly the frames after it.
	for i := range d.Frames {
		rest, err := h.gw.Poll(context.Background(), d.Tokens[i], time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprintf("%s", rest.Frames) != fmt.Sprintf("%s", d.Frames[i+1:]) {
			t.Errorf("resume after frame %d:\n got %s\nwant %s", i, rest.Frames, d.Frames[i+1:])
		}
	}
}

func TestDrainAnswersWaitingPollsAndRefusesNewSessions(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	done := make(chan *Delivery, 1)
	go func() {
		d, _ := h.gw.Poll(context.Background(), a.tok, 10*time.Second)
		done <- d
	}()
	time.Sleep(20 * time.Millisecond)
	h.gw.Drain()
	h.gw.Drain() // twice is fine
	select {
	case d := <-done:
		if d == nil || len(d.Frames) != 0 || d.Token.String() != a.tok.String() {
			t.Fatalf("drained poll = %+v, want an empty delivery with the same token", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a waiting poll was not answered when the instance began draining")
	}
	if _, err := h.gw.Connect(context.Background(), ConnectInfo{Token: "2", Vsn: "2.0.0"}); err != ErrDraining {
		t.Errorf("Connect while draining = %v, want ErrDraining", err)
	}
	// The session itself lives on, for another instance to serve.
	if _, err := h.store.Load(context.Background(), a.tok.SessionID); err != nil {
		t.Errorf("draining ended the session: %v", err)
	}
}

// A session whose connection closed (a WebSocket) ends at once, long before
// its timeout: its presence leaves once, concurrent ends announce nothing
// twice, and the session is gone.
func TestEndSessionLeavesAtOnce(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SessionTimeout = time.Hour })
	a := h.connect("1", "2.0.0")
	b := h.connect("2", "2.0.0")
	a.send(`["1","1","room:a","phx_join",{}]`)
	a.poll()
	b.send(`["1","1","room:a","phx_join",{}]`)
	b.poll()
	a.poll()

	var wg sync.WaitGroup
	var mu sync.Mutex
	ended := 0
	for range 3 {
		wg.Go(func() {
			ok, err := h.gw.EndSession(context.Background(), a.tok.SessionID, "closed")
			if err != nil {
				t.Errorf("EndSession: %v", err)
			}
			if ok {
				mu.Lock()
				ended++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if ended != 1 {
		t.Errorf("%d EndSession calls reported ending the session, want 1", ended)
	}
	expectFrames(t, b.poll(), `[null,null,"room:a","presence_diff",{"joins":{},"leaves":{"1":{"metas":[{"status":"active","phx_ref":"*"}]}}}]`)
	if _, err := h.gw.Poll(context.Background(), a.tok, time.Millisecond); err != ErrNoSession {
		t.Errorf("poll of an ended session: %v, want ErrNoSession", err)
	}
	if ok, err := h.gw.EndSession(context.Background(), a.tok.SessionID, "closed"); ok || err != nil {
		t.Errorf("EndSession of a gone session = %v, %v; want false, nil", ok, err)
	}
}
