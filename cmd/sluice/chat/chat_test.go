package chat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/topics"
)

const testSecret = "chat-test-secret-key-base-0123456789abcdef"

// roomCounter is a Store that counts the room lookups a join makes: one per
// password checked.
type roomCounter struct {
	Store
	lookups atomic.Int64
}

func (r *roomCounter) Room(ctx context.Context, id string) (*Room, error) {
	r.lookups.Add(1)
	return r.Store.Room(ctx, id)
}

// chatGateway is a gateway running the chat app on memory stores.
type chatGateway struct {
	gw    *gateway.Gateway
	app   *App
	store *roomCounter
}

func newChatGateway(t *testing.T) *chatGateway {
	return newChatGatewayOn(t, NewMemoryStore(HistorySize))
}

// newChatGatewayOn is a gateway running the chat app on st (one instance of
// several when they share st).
func newChatGatewayOn(t *testing.T, st Store) *chatGateway {
	t.Helper()
	store := &roomCounter{Store: st}
	app := New(store)
	router := &topics.Router[gateway.Handler]{}
	app.Register(router)
	mem := gateway.NewMemoryStore()
	gw, err := gateway.New(gateway.Config{
		Router:       router,
		Authenticate: gateway.TokenAuthenticator(testSecret, time.Hour),
		Sessions:     mem,
		Presence:     mem,
		Broker:       topics.NewMemoryBroker(1000, time.Hour),
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &chatGateway{gw: gw, app: app, store: store}
}

// joinReplies joins topic once per password, all in one batch of frames as
// one POST carries them, as user; it returns each join's reply (status and
// reason) in order.
func (c *chatGateway) joinReplies(t *testing.T, user, topic string, passwords ...string) []string {
	t.Helper()
	ctx := context.Background()
	userTok, err := gateway.SignUserToken(testSecret, user, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.gw.Connect(ctx, gateway.ConnectInfo{Token: userTok, Vsn: "2.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	frames := make([][]byte, len(passwords))
	for i, pw := range passwords {
		ref := strconv.Itoa(i + 1)
		payload, _ := json.Marshal(map[string]string{"password": pw})
		frames[i] = fmt.Appendf(nil, `[%q,%q,%q,"phx_join",%s]`, ref, ref, topic, payload)
	}
	if err := c.gw.Handle(ctx, tok.SessionID, frames); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	replies := make([]string, len(passwords))
	got := 0
	for got < len(passwords) {
		d, err := c.gw.Poll(ctx, tok, 100*time.Millisecond)
		if err != nil {
			t.Fatalf("Poll: %v", err)
		}
		if len(d.Frames) == 0 {
			t.Fatalf("got %d join replies of %d: %q", got, len(passwords), replies)
		}
		tok = d.Token
		for _, f := range d.Frames {
			var m [5]json.RawMessage
			var ref, event string
			var reply struct {
				Status   string `json:"status"`
				Response struct {
					Reason string `json:"reason"`
				} `json:"response"`
			}
			if json.Unmarshal(f, &m) != nil || json.Unmarshal(m[1], &ref) != nil || json.Unmarshal(m[3], &event) != nil || event != "phx_reply" {
				continue
			}
			if err := json.Unmarshal(m[4], &reply); err != nil {
				t.Fatalf("reply %s: %v", f, err)
			}
			i, err := strconv.Atoi(ref)
			if err != nil || i < 1 || i > len(passwords) || replies[i-1] != "" {
				t.Fatalf("unexpected reply %s", f)
			}
			replies[i-1] = reply.Status + " " + reply.Response.Reason
			got++
		}
	}
	return replies
}

// One POST carrying 100 password guesses for a private room gets at most
// MaxJoinFailures of them checked; the rest, the right password included,
// are refused as too many attempts. Before, all 100 were checked: a 4-digit
// password fell in under a second (issue 10, item 6).
func TestPrivateRoomPasswordGuessesAreThrottled(t *testing.T) {
	c := newChatGateway(t)
	ctx := context.Background()
	if err := c.store.PutRoom(ctx, Room{ID: "caja", Password: "0042"}); err != nil {
		t.Fatal(err)
	}
	guesses := make([]string, 100)
	for i := range guesses {
		guesses[i] = fmt.Sprintf("%04d", i+100) // all wrong...
	}
	guesses[60] = "0042" // ...but one, after the limit
	replies := c.joinReplies(t, "7", "sala:privada:caja", guesses...)
	if n := c.store.lookups.Load(); n > MaxJoinFailures {
		t.Errorf("%d passwords checked in one batch, want at most %d", n, MaxJoinFailures)
	}
	for i, r := range replies {
		want := "error " + ReasonTooManyAttempts
		if i < MaxJoinFailures {
			want = "error contraseña incorrecta"
		}
		if r != want {
			t.Errorf("join %d (password %s): %q, want %q", i+1, guesses[i], r, want)
		}
	}

	// The right password is refused too while the window lasts...
	if r := c.joinReplies(t, "7", "sala:privada:caja", "0042"); r[0] != "error "+ReasonTooManyAttempts {
		t.Errorf("the right password within the window: %q, want refused", r[0])
	}
	// ...for that user and room only.
	if r := c.joinReplies(t, "8", "sala:privada:caja", "0042"); r[0] != "ok " {
		t.Errorf("another user with the right password: %q, want ok", r[0])
	}
	if err := c.store.PutRoom(ctx, Room{ID: "otra", Password: "x"}); err != nil {
		t.Fatal(err)
	}
	if r := c.joinReplies(t, "7", "sala:privada:otra", "x"); r[0] != "ok " {
		t.Errorf("the same user on another room: %q, want ok", r[0])
	}
}

// Once the window passes, the right password opens the room again; a
// success clears the count, so earlier failures do not add up with later
// ones.
func TestPrivateRoomThrottleEndsWithTheWindow(t *testing.T) {
	c := newChatGateway(t)
	const window = 300 * time.Millisecond
	c.app.joinWindow = window
	if err := c.store.PutRoom(context.Background(), Room{ID: "caja", Password: "0042"}); err != nil {
		t.Fatal(err)
	}
	c.joinReplies(t, "7", "sala:privada:caja", "1", "2", "3", "4", "5", "6")
	time.Sleep(2 * window)
	if r := c.joinReplies(t, "7", "sala:privada:caja", "0042"); r[0] != "ok " {
		t.Fatalf("the right password after the window: %q, want ok", r[0])
	}

	c.app.joinWindow = time.Minute
	c.joinReplies(t, "9", "sala:privada:caja", "1", "2", "3", "4")
	if r := c.joinReplies(t, "9", "sala:privada:caja", "0042"); r[0] != "ok " {
		t.Fatalf("the right password after 4 failures: %q, want ok", r[0])
	}
	r := c.joinReplies(t, "9", "sala:privada:caja", "1", "2", "3", "4", "5", "6")
	if r[4] != "error contraseña incorrecta" || r[5] != "error "+ReasonTooManyAttempts {
		t.Errorf("after a success, 6 failures: %q, want 5 checked and the 6th refused", r)
	}
}

// sharedRedis returns a Redis client for a test: the server at SLUICE_TEST_REDIS if
// set (keys under a fresh prefix, deleted at the end), else miniredis.
func sharedRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "sluicetest:chat:" + hex.EncodeToString(b[:]) + ":"
	u := os.Getenv("SLUICE_TEST_REDIS")
	if u == "" {
		c := redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
		t.Cleanup(func() { c.Close() })
		return c, prefix
	}
	opts, err := redis.ParseURL(u)
	if err != nil {
		t.Fatalf("SLUICE_TEST_REDIS: %v", err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() {
		defer c.Close()
		ctx := context.Background()
		keys, _ := c.Keys(ctx, prefix+"*").Result()
		for _, k := range keys {
			c.Del(ctx, k)
		}
	})
	return c, prefix
}

// The throttle holds across instances: guesses sent to two instances that
// share Redis add up, so spreading them over a balancer gains nothing.
func TestPrivateRoomThrottleHoldsAcrossInstances(t *testing.T) {
	c, prefix := sharedRedis(t)
	a := newChatGatewayOn(t, NewRedisStore(c, prefix, HistorySize))
	b := newChatGatewayOn(t, NewRedisStore(c, prefix, HistorySize))
	if err := a.store.PutRoom(context.Background(), Room{ID: "caja", Password: "0042"}); err != nil {
		t.Fatal(err)
	}
	a.joinReplies(t, "7", "sala:privada:caja", "1", "2", "3")
	r := b.joinReplies(t, "7", "sala:privada:caja", "4", "5", "0042")
	if want := "error " + ReasonTooManyAttempts; r[0] != "error contraseña incorrecta" || r[1] != "error contraseña incorrecta" || r[2] != want {
		t.Errorf("on the second instance after 3 failures on the first: %q, want 2 more checked and then refused", r)
	}
	if n := a.store.lookups.Load() + b.store.lookups.Load(); n != MaxJoinFailures {
		t.Errorf("%d passwords checked across both instances, want %d", n, MaxJoinFailures)
	}
}
