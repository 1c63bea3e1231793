package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/storetest"
	"github.com/sluicegw/sluice/topics"
)

// countingRoom counts the messages its handler applies, so that a test sees
// a message applied twice even where the replies look alike.
type countingRoom struct{ applied atomic.Int32 }

func (*countingRoom) Join(c *gateway.Context, _ json.RawMessage) gateway.Reply {
	return gateway.Ok(map[string]string{"joined": c.Topic()})
}

func (r *countingRoom) HandleIn(c *gateway.Context, event string, payload json.RawMessage) gateway.Reply {
	switch event {
	case "count":
		return gateway.Ok(map[string]int32{"n": r.applied.Add(1)})
	case "ping":
		return gateway.Ok(payload) // an echo, as the chat app's ping
	case "shout":
		r.applied.Add(1)
		if err := c.Broadcast("shouted", payload); err != nil {
			return gateway.Error(map[string]string{"reason": err.Error()})
		}
		return gateway.Ok(nil)
	}
	return gateway.Error(map[string]string{"reason": "unknown event"})
}

// flakyBroker fails chosen Publish calls, as a broker that stalls or drops
// its connection does.
type flakyBroker struct {
	topics.Broker
	mu sync.Mutex
	// failIn: the failIn-th Publish from now fails (1: the next); 0: none.
	failIn int
	// headFails: the topic whose Head fails; "": none.
	headFails string
}

// Head fails for headFails.
func (b *flakyBroker) Head(ctx context.Context, topic string) (uint64, error) {
	b.mu.Lock()
	fail := topic != "" && topic == b.headFails
	b.mu.Unlock()
	if fail {
		return 0, errBrokerDown
	}
	return b.Broker.Head(ctx, topic)
}

var errBrokerDown = errors.New("broker unavailable (injected by the test)")

// failPublish makes the nth Publish from now fail.
func (b *flakyBroker) failPublish(nth int) {
	b.mu.Lock()
	b.failIn = nth
	b.mu.Unlock()
}

func (b *flakyBroker) Publish(ctx context.Context, topic string, data ...[]byte) (uint64, error) {
	b.mu.Lock()
	fail := false
	if b.failIn > 0 {
		b.failIn--
		fail = b.failIn == 0
	}
	b.mu.Unlock()
	if fail {
		return 0, errBrokerDown
	}
	return b.Broker.Publish(ctx, topic, data...)
}

// stateBackend makes the shared state of a gateway: the memory store and
// broker, or Redis's.
type stateBackend struct {
	name string
	new  func(t *testing.T) (storetest.Store, topics.Broker)
}

// stateBackends returns the memory backend and one per redisBackend.
func stateBackends(t *testing.T) []stateBackend {
	bs := []stateBackend{{"memory", func(t *testing.T) (storetest.Store, topics.Broker) {
		return gateway.NewMemoryStore(), topics.NewMemoryBroker(100, time.Hour)
	}}}
	for _, rb := range redisBackends(t) {
		bs = append(bs, stateBackend{"redis/" + rb.name, func(t *testing.T) (storetest.Store, topics.Broker) {
			c := rb.connect(t)
			prefix := redisTestPrefix(t, c)
			return newTestRedisStore(t, c, prefix), topics.NewRedisBroker(c, topics.RedisOptions{Prefix: prefix, Logger: redisTestLogger(t)})
		}})
	}
	return bs
}

// testGateway is a gateway on a backend whose broker fails on demand.
type testGateway struct {
	t      *testing.T
	gw     *gateway.Gateway
	store  storetest.Store
	broker *flakyBroker
	room   *countingRoom
}

func newTestGateway(t *testing.T, b stateBackend, mutate func(*gateway.Config)) *testGateway {
	t.Helper()
	store, broker := b.new(t)
	return newTestGatewayOn(t, store, broker, mutate)
}

// newTestGatewayOn is newTestGateway on a given store and broker.
func newTestGatewayOn(t *testing.T, store storetest.Store, broker topics.Broker, mutate func(*gateway.Config)) *testGateway {
	t.Helper()
	tg := &testGateway{t: t, store: store, broker: &flakyBroker{Broker: broker}, room: &countingRoom{}}
	router := &topics.Router[gateway.Handler]{}
	router.Add("room:*", tg.room)
	cfg := gateway.Config{
		Router:   router,
		Sessions: store, Presence: store, Broker: tg.broker,
		Authenticate: func(_ context.Context, info gateway.ConnectInfo) (gateway.Identity, error) {
			return gateway.Identity{UserID: json.RawMessage(info.Token)}, nil
		},
		SessionTimeout: time.Minute,
		Logger:         redisTestLogger(t),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tg.gw = gw
	return tg
}

// testClient is one session of a testGateway.
type testClient struct {
	tg  *testGateway
	tok gateway.SessionToken
}

func (tg *testGateway) connect(user string) *testClient {
	tg.t.Helper()
	tok, err := tg.gw.Connect(context.Background(), gateway.ConnectInfo{Token: user, Vsn: "2.0.0"})
	if err != nil {
		tg.t.Fatalf("Connect(%s): %v", user, err)
	}
	return &testClient{tg: tg, tok: tok}
}

func batch(frames ...string) [][]byte {
	out := make([][]byte, len(frames))
	for i, f := range frames {
		out[i] = []byte(f)
	}
	return out
}

// handle sends one batch and returns Handle's error.
func (c *testClient) handle(frames ...string) error {
	return c.tg.gw.Handle(context.Background(), c.tok.SessionID, batch(frames...))
}

// send sends one batch, which must be applied.
func (c *testClient) send(frames ...string) {
	c.tg.t.Helper()
	if err := c.handle(frames...); err != nil {
		c.tg.t.Fatalf("Handle(%v): %v", frames, err)
	}
}

// failed sends one batch, whose publication must fail as the broker does.
func (c *testClient) failed(frames ...string) {
	c.tg.t.Helper()
	err := c.handle(frames...)
	var be *gateway.BatchError
	if !errors.Is(err, errBrokerDown) || errors.As(err, &be) || errors.Is(err, gateway.ErrNoSession) {
		c.tg.t.Fatalf("Handle(%v) with the broker failing = %v, want the broker's error", frames, err)
	}
}

// poll returns what is pending for the session (waiting briefly) and
// acknowledges it.
func (c *testClient) poll() []string {
	c.tg.t.Helper()
	d, err := c.tg.gw.Poll(context.Background(), c.tok, 50*time.Millisecond)
	if err != nil {
		c.tg.t.Fatalf("Poll: %v", err)
	}
	c.tok = d.Token
	out := make([]string, len(d.Frames))
	for i, f := range d.Frames {
		out[i] = string(f)
	}
	return out
}

// expect polls and requires exactly the frames want, in order.
func (c *testClient) expect(what string, want ...string) {
	c.tg.t.Helper()
	got := c.poll()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		c.tg.t.Fatalf("%s:\n got  %d frames: %s\n want %d frames: %s", what, len(got), strings.Join(got, "\n             "), len(want), strings.Join(want, "\n             "))
	}
}

func (c *testClient) joinRoom(topic string) {
	c.tg.t.Helper()
	c.send(`["1","1",` + fmt.Sprintf("%q", topic) + `,"phx_join",{}]`)
	c.expect("join", `["1","1",`+fmt.Sprintf("%q", topic)+`,"phx_reply",{"response":{"joined":`+fmt.Sprintf("%q", topic)+`},"status":"ok"}]`)
}

func (tg *testGateway) wantApplied(n int32) {
	tg.t.Helper()
	if got := tg.room.applied.Load(); got != n {
		tg.t.Fatalf("the handler applied %d messages, want %d", got, n)
	}
}

const heartbeatReply3 = `[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]`

// A batch whose publication failed (its request answered 503, retry) is
// applied once when retried, and its replies come: before, its refs were
// saved as handled, the retry was dropped as a duplicate, and the replies
// never came.
func TestRetryAfterFailedPublishIsAppliedOnce(t *testing.T) {
	for _, b := range stateBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			tg := newTestGateway(t, b, nil)
			c := tg.connect("1")
			c.joinRoom("room:a")

			frames := []string{`["1","2","room:a","count",{}]`, `[null,"3","phoenix","heartbeat",{}]`}
			tg.broker.failPublish(1)
			c.failed(frames...)
			c.send(frames...) // the retry
			c.expect("after the retry", `["1","2","room:a","phx_reply",{"response":{"n":1},"status":"ok"}]`, heartbeatReply3)
			tg.wantApplied(1)

			c.send(frames...) // a proxy repeats it once more: nothing new
			c.expect("after a second retry")
			tg.wantApplied(1)
		})
	}
}

// A batch whose records were published in part (a broadcast, then not its
// reply) gets the rest, and only the rest, on retry.
func TestRetryAfterPartialPublishCompletesIt(t *testing.T) {
	for _, b := range stateBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			tg := newTestGateway(t, b, nil)
			c := tg.connect("1")
			other := tg.connect("2")
			c.joinRoom("room:a")
			other.joinRoom("room:a")

			shout := `["1","4","room:a","shout",{"x":1}]`
			shouted := `[null,null,"room:a","shouted",{"x":1}]`
			tg.broker.failPublish(2) // the broadcast goes out, the reply does not
			c.failed(shout)
			other.expect("the broadcast published before the failure", shouted)
			c.send(shout)
			c.expect("after the retry", shouted, `["1","4","room:a","phx_reply",{"response":{},"status":"ok"}]`)
			other.expect("after the retry: the broadcast is not published again")
			tg.wantApplied(1)
		})
	}
}

// What a failed batch sent is published before anything of the session's
// next batch, whatever that batch is, and when the session ends.
func TestPendingRecordsPublishedFirst(t *testing.T) {
	for _, b := range stateBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			tg := newTestGateway(t, b, nil)
			c := tg.connect("1")
			other := tg.connect("2")
			c.joinRoom("room:a")
			other.joinRoom("room:a")

			tg.broker.failPublish(1)
			c.failed(`["1","2","room:a","count",{}]`)
			c.send(`[null,"3","phoenix","heartbeat",{}]`) // not a retry
			c.expect("the failed batch's reply, then the next batch's", `["1","2","room:a","phx_reply",{"response":{"n":1},"status":"ok"}]`, heartbeatReply3)

			tg.broker.failPublish(1)
			c.failed(`["1","5","room:a","shout",{"last":true}]`)
			if n, err := tg.gw.Disconnect(context.Background(), "user_socket:1"); err != nil || n != 1 {
				t.Fatalf("Disconnect = %d, %v; want 1 session ended", n, err)
			}
			other.expect("the broadcast of the ended session's last batch", `[null,null,"room:a","shouted",{"last":true}]`)
			tg.wantApplied(2)
		})
	}
}

// TestConnectAndHandle: frames given with the connect are applied to the
// new session as Handle would (the join's reply comes first, broadcasts to
// the channel follow); a malformed batch makes no session at all; a broker
// that fails makes the connect fail, with no reply to hand out.
func TestConnectAndHandle(t *testing.T) {
	for _, b := range stateBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			tg := newTestGateway(t, b, nil)
			ctx := t.Context()
			join := batch(`["1","1","room:a","phx_join",{}]`)
			opened, err := tg.gw.ConnectAndHandle(ctx, gateway.ConnectInfo{Token: `"ana"`, Vsn: "2.0.0"}, join)
			if err != nil {
				t.Fatalf("ConnectAndHandle: %v", err)
			}
			c := &testClient{tg: tg, tok: opened.Token}
			c.expect("join", `["1","1","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`)
			if err := tg.gw.Broadcast(ctx, "room:a", "news", json.RawMessage(`{"n":1}`)); err != nil {
				t.Fatal(err)
			}
			c.expect("broadcast", `[null,null,"room:a","news",{"n":1}]`)
			// The refs are remembered: the same join sent again is a duplicate.
			c.send(`["1","1","room:a","phx_join",{}]`)
			c.expect("nothing for a duplicate")

			_, err = tg.gw.ConnectAndHandle(ctx, gateway.ConnectInfo{Token: `"bob"`, Vsn: "2.0.0"}, batch(`["1","1","room:a","phx_join",{}]`, `not json`))
			var be *gateway.BatchError
			if !errors.As(err, &be) || be.Index != 1 {
				t.Fatalf("ConnectAndHandle with a malformed 2nd frame = %v, want a BatchError for it", err)
			}
			if ids, err := tg.store.BySocket(ctx, "user_socket:bob"); err != nil || len(ids) != 0 {
				t.Fatalf("after a refused batch, bob's sessions = %v, %v; want none", ids, err)
			}

			tg.broker.failIn = 1
			if _, err := tg.gw.ConnectAndHandle(ctx, gateway.ConnectInfo{Token: `"cy"`, Vsn: "2.0.0"}, join); !errors.Is(err, errBrokerDown) {
				t.Fatalf("ConnectAndHandle with the broker failing = %v, want its error", err)
			}

			// A join whose channel cannot be read (a slow or down store)
			// fails the connect with that error, not a "join crashed"
			// reply, and leaves no session behind.
			tg.broker.headFails = "t:room:b"
			_, err = tg.gw.ConnectAndHandle(ctx, gateway.ConnectInfo{Token: `"dee"`, Vsn: "2.0.0"}, batch(`["1","1","room:a","phx_join",{}]`, `["2","2","room:b","phx_join",{}]`))
			if !errors.Is(err, errBrokerDown) {
				t.Fatalf("ConnectAndHandle with a channel's head failing = %v, want the broker's error", err)
			}
			if ids, err := tg.store.BySocket(ctx, "user_socket:dee"); err != nil || len(ids) != 0 {
				t.Fatalf("after a join failed on the store, dee's sessions = %v, %v; want none", ids, err)
			}
		})
	}
}
