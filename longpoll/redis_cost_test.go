package longpoll_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/redistest"
	"github.com/sluicegw/sluice/internal/testroom"
	"github.com/sluicegw/sluice/topics"
)

// TestConnectRoundTrips counts the Redis round trips of a LongPoll client's
// connect as phoenix.js (and `sluice bench --scenario connect --transport
// longpoll`) makes it: the GET that opens the session, the POST of the join
// and the poll that brings the join's reply. It fails if a change adds one;
// lower a budget when one goes.
func TestConnectRoundTrips(t *testing.T) {
	budgets := map[string]int64{
		// The mailbox's head, the session's deadline, data and socket
		// index, pipelined. It was 2 before they went in one pipeline.
		"open": 1,
		// Lock+load; the channel's head; the test room's presence list,
		// put and list; save with the outbox; publish the reply, the diff
		// and the presence_state in order (3); clear the outbox and
		// unlock. It was 12 before the load that preceded the lock+load
		// went, and the unlock went with the last save.
		"join": 10,
		// Touch+load; read the mailbox and the channel.
		"poll": 2,
	}
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	counter := &redistest.Counter{}
	c.AddHook(counter)
	log := slog.New(slog.DiscardHandler)
	store := gateway.NewRedisStore(c, gateway.RedisOptions{Prefix: "sluicetest:lp:", Logger: log})
	broker := topics.NewRedisBroker(c, topics.RedisOptions{Prefix: "sluicetest:lp:", MaxLen: 100, Logger: log})
	go func() { _ = broker.Run(t.Context()) }()
	router := &topics.Router[gateway.Handler]{}
	router.Add("room:*", testroom.Handler{})
	gw, err := gateway.New(gateway.Config{
		Router:         router,
		Authenticate:   gateway.TokenAuthenticator(testSecret, 24*time.Hour),
		Sessions:       store,
		Presence:       store,
		Broker:         broker,
		SessionTimeout: time.Hour,
		Logger:         log,
	})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envConfig{Gateway: gw})
	got := map[string]int64{}
	// The first client loads the scripts into Redis; count the second.
	for i, id := range []string{"1", "2"} {
		var cl *client
		trips, cmds := counter.Measure(func() { cl = e.connect(t, id, "2.0.0") })
		got["open"] = trips
		jtrips, jcmds := counter.Measure(func() {
			cl.send(t, `["1","1","room:cost`+id+`","phx_join",{"name":"`+id+`"}]`)
		})
		got["join"] = jtrips
		ptrips, pcmds := counter.Measure(func() {
			if msgs := cl.recv(t); len(msgs) == 0 {
				t.Fatal("the poll after the join brought nothing")
			}
		})
		got["poll"] = ptrips
		if i == 1 {
			t.Logf("open %d round trips (%d commands), join %d (%d), poll %d (%d)", trips, cmds, jtrips, jcmds, ptrips, pcmds)
		}
	}
	for name, budget := range budgets {
		if got[name] > budget {
			t.Errorf("%s took %d Redis round trips, more than its budget of %d", name, got[name], budget)
		}
	}
}
