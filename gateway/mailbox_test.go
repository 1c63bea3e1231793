package gateway_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/storetest"
	"github.com/sluicegw/sluice/topics"
)

// A session's mailbox (its replies and pushes) is bounded in bytes, not only
// in records: a client that sends 200 pings of the largest payload, whose
// replies echo it, and never polls, made its session keep every reply (about
// 13 MB here, and --history of them, ~64 MiB, by default) in Redis or in the
// memory instance. With a byte budget on the mailboxes the session keeps at
// most the budget, and the client, when it polls at last, is told that it
// missed replies (phx_error on its channel, as for a topic it fell behind
// on), never left with a silent gap; it rejoins and goes on.
func TestMailboxOfAClientThatNeverPollsIsBoundedInBytes(t *testing.T) {
	const budget, maxPayload, pings = 2 << 20, 64 << 10, 200
	mailboxBudget := topics.ByteBudget{Prefix: gateway.MailboxTopicPrefix, MaxBytes: budget}
	type backend struct {
		name string
		// new returns the state, and a description of what a mailbox takes
		// in the store beyond its records.
		new func(t *testing.T) (storetest.Store, topics.Broker, func(sessionID string) string)
	}
	backends := []backend{{"memory", func(t *testing.T) (storetest.Store, topics.Broker, func(string) string) {
		return gateway.NewMemoryStore(), topics.NewMemoryBroker(1000, time.Hour, mailboxBudget), func(string) string { return "" }
	}}}
	for _, rb := range redisBackends(t) {
		backends = append(backends, backend{"redis/" + rb.name, func(t *testing.T) (storetest.Store, topics.Broker, func(string) string) {
			c := rb.connect(t)
			prefix := redisTestPrefix(t, c)
			broker := topics.NewRedisBroker(c, topics.RedisOptions{Prefix: prefix, MaxLen: 1000, ByteBudgets: []topics.ByteBudget{mailboxBudget}, Logger: redisTestLogger(t)})
			return newTestRedisStore(t, c, prefix), broker, func(id string) string {
				ctx := context.Background()
				base := prefix + "{" + gateway.MailboxTopicPrefix + id + "}:"
				var samples []int
				if rb.name != "miniredis" {
					samples = []int{0} // every node of the stream, not an estimate from 5 (miniredis refuses the option)
				}
				usage, err := c.MemoryUsage(ctx, base+"log", samples...).Result()
				size, err2 := c.Get(ctx, base+"size").Result()
				return fmt.Sprintf("; Redis: MEMORY USAGE of the log %d (%v), size key %q (%v)", usage, err, size, err2)
			}
		}})
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			store, broker, inspect := be.new(t)
			tg := newTestGatewayOn(t, store, broker, func(c *gateway.Config) { c.MaxPayloadBytes = maxPayload })
			c := tg.connect("1")
			c.joinRoom("room:a")

			payload := `{"x":"` + strings.Repeat("a", maxPayload-8) + `"}`
			for i := range pings {
				c.send(fmt.Sprintf(`["1","%d","room:a","ping",%s]`, 2+i, payload))
			}
			batch, err := broker.Read(context.Background(), gateway.MailboxTopicPrefix+c.tok.SessionID, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			held := 0
			for _, r := range batch.Records {
				held += len(r.Data)
			}
			t.Logf("after %d pings of %d bytes, never polled: the mailbox holds %d records, %d bytes of records (budget %d)%s", pings, len(payload), len(batch.Records), held, budget, inspect(c.tok.SessionID))
			if held > budget {
				t.Fatalf("the mailbox holds %d bytes, over its budget of %d", held, budget)
			}
			if held < budget-2*maxPayload {
				t.Errorf("the mailbox holds %d bytes: more than a reply under its budget of %d was dropped", held, budget)
			}

			// The client polls at last: the newest replies, then phx_error.
			got := c.poll()
			if len(got) < 2 {
				t.Fatalf("the first poll got %d frames, want the replies kept and phx_error", len(got))
			}
			if want := `["1","1","room:a","phx_error",{"reason":"missed messages"}]`; got[len(got)-1] != want {
				t.Fatalf("the first poll ends with %.120s, want %s", got[len(got)-1], want)
			}
			replies := got[:len(got)-1]
			if len(replies) != len(batch.Records) {
				t.Errorf("the first poll got %d replies, want the %d kept", len(replies), len(batch.Records))
			}
			for i, f := range replies {
				ref := strconv.Itoa(2 + pings - len(replies) + i) // the newest, in order
				if want := `["1","` + ref + `","room:a","phx_reply",{"response":` + payload + `,"status":"ok"}]`; f != want {
					t.Fatalf("reply %d of the first poll is %.80s…, want the reply to ping %s", i, f, ref)
				}
			}
			c.expect("the next poll: the gap is told once")

			// phoenix.js rejoins (with a new ref) and goes on; the channel
			// of the old join_ref is closed, as on any rejoin.
			c.send(`["3","300","room:a","phx_join",{}]`)
			c.expect("the rejoin", `["3","300","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`, `["1","1","room:a","phx_close",{}]`)
			c.send(`["3","301","room:a","ping",{"after":"rejoin"}]`)
			c.expect("a ping after the rejoin", `["3","301","room:a","phx_reply",{"response":{"after":"rejoin"},"status":"ok"}]`)
		})
	}
}

// A session's mailbox does not keep what its client has: a poll that
// presents cursor N acknowledges the records up to N, which the broker then
// drops (they stayed for --history-ttl before, 6.8 KiB per long-poll chat
// session in Redis). A poll retried with the same token, after a lost
// answer, gets the same answer again.
func TestMailboxDropsAcknowledgedRecords(t *testing.T) {
	for _, be := range stateBackends(t) {
		t.Run(be.name, func(t *testing.T) {
			store, broker := be.new(t)
			tg := newTestGatewayOn(t, store, broker, nil)
			c := tg.connect("1")
			mailbox := func() []topics.Record {
				t.Helper()
				b, err := broker.Read(context.Background(), gateway.MailboxTopicPrefix+c.tok.SessionID, 0, 0)
				if err != nil {
					t.Fatal(err)
				}
				return b.Records
			}
			c.joinRoom("room:a") // its reply is read with the connect's cursor
			c.send(`["1","2","room:a","ping",{"n":1}]`, `["1","3","room:a","ping",{"n":2}]`)
			if n := len(mailbox()); n != 3 {
				t.Fatalf("before the replies are acknowledged, the mailbox holds %d records, want the join reply and 2 replies", n)
			}
			sent := c.tok
			first := c.poll()
			if len(first) != 2 {
				t.Fatalf("the poll got %d frames, want the 2 replies", len(first))
			}
			// That poll presented the cursor after the join reply: only the
			// join reply is acknowledged.
			if recs := mailbox(); len(recs) != 2 {
				t.Fatalf("after a poll acknowledging the join reply, the mailbox holds %d records, want the 2 replies it was answered", len(recs))
			}
			// The answer was lost: the client retries with the same token.
			retried, err := tg.gw.Poll(context.Background(), sent, 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if len(retried.Frames) != 2 || string(retried.Frames[0]) != first[0] || string(retried.Frames[1]) != first[1] || retried.Token.String() != c.tok.String() {
				t.Fatalf("the retried poll got %q (token %s), want the same answer %q (token %s)", retried.Frames, retried.Token, first, c.tok)
			}
			// The next poll acknowledges the replies: nothing is left.
			c.expect("the next poll")
			if recs := mailbox(); len(recs) != 0 {
				t.Fatalf("after every record was acknowledged, the mailbox holds %d records", len(recs))
			}
			// And the mailbox goes on.
			c.send(`["1","4","room:a","ping",{"n":3}]`)
			c.expect("a reply after the mailbox emptied", `["1","4","room:a","phx_reply",{"response":{"n":3},"status":"ok"}]`)
		})
	}
}
