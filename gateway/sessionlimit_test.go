package gateway_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/storetest"
	"github.com/sluicegw/sluice/topics"
)

// slowCreate is a store whose Create takes a while to start, as a remote
// store's does: a count read before a Create is then stale for longer.
type slowCreate struct{ storetest.Store }

func (s slowCreate) Create(ctx context.Context, sess *gateway.Session, deadline time.Time, maxPerSocket int) error {
	time.Sleep(5 * time.Millisecond)
	return s.Store.Create(ctx, sess, deadline, maxPerSocket)
}

// --max-sessions-per-user holds when one user's connects race: before,
// Connect counted the user's sessions and then created one, so 50 parallel
// connects under a limit of 2 all passed the count.
func TestConnectSessionLimitUnderConcurrency(t *testing.T) {
	for _, b := range stateBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			const racers, limit = 50, 2
			slow := stateBackend{b.name, func(t *testing.T) (storetest.Store, topics.Broker) {
				st, br := b.new(t)
				return slowCreate{st}, br
			}}
			tg := newTestGateway(t, slow, func(c *gateway.Config) { c.MaxSessionsPerUser = limit })
			var ok, refused atomic.Int32
			var wg sync.WaitGroup
			start := make(chan struct{})
			for range racers {
				wg.Go(func() {
					<-start
					_, err := tg.gw.Connect(context.Background(), gateway.ConnectInfo{Token: "1", Vsn: "2.0.0"})
					switch {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, gateway.ErrTooManySessions):
						refused.Add(1)
					default:
						t.Errorf("Connect: %v", err)
					}
				})
			}
			close(start)
			wg.Wait()
			if ok.Load() != limit || refused.Load() != racers-limit {
				t.Fatalf("%d parallel connects of one user under a limit of %d: %d sessions, %d refused; want %d and %d", racers, limit, ok.Load(), refused.Load(), limit, racers-limit)
			}
			if ids, err := tg.store.BySocket(context.Background(), "user_socket:1"); err != nil || len(ids) != limit {
				t.Fatalf("BySocket = %v, %v; want %d sessions", ids, err, limit)
			}
			// Another user is not affected; ending a session frees a place.
			tg.connect("2")
			if n, err := tg.gw.Disconnect(context.Background(), "user_socket:1"); err != nil || n != limit {
				t.Fatalf("Disconnect = %d, %v", n, err)
			}
			tg.connect("1")
		})
	}
}

// An id left in a socket's index after its session's data went (ended by
// its TTL, or a Remove whose cleanup failed) does not count for the limit,
// and the Create that finds it drops it.
func TestRedisStoreLimitIgnoresGoneSessions(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		ctx := t.Context()
		st := newTestRedisStore(t, c, prefix)
		d := time.Now().Add(time.Hour)
		for i := range 2 {
			if err := st.Create(ctx, redisTestSession(redisTestID(i), `7`), d, 2); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Create(ctx, redisTestSession(redisTestID(2), `7`), d, 2); !errors.Is(err, gateway.ErrTooManySessions) {
			t.Fatalf("third session under a limit of 2: %v, want ErrTooManySessions", err)
		}
		if err := c.Del(ctx, prefix+"{s:"+redisTestID(0)+"}").Err(); err != nil {
			t.Fatal(err)
		}
		if err := st.Create(ctx, redisTestSession(redisTestID(3), `7`), d, 2); err != nil {
			t.Fatalf("Create with one of the two listed sessions gone: %v", err)
		}
		members, err := c.SMembers(ctx, prefix+"{sock:user_socket:7}").Result()
		slices.Sort(members)
		if err != nil || !slices.Equal(members, []string{redisTestID(1), redisTestID(3)}) {
			t.Fatalf("socket index = %v, %v; want the gone id dropped and the new one added", members, err)
		}
	})
}
