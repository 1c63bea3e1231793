package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sluicegw/sluice/topics"
)

// A client chooses its payloads, and a handler's reply (an echo) or a
// broadcast keeps one in a broker log: the mailbox holds --history of them.
// encoding/json's HTML escaping turned each '<', '>' and '&' of a payload
// into six bytes (U+2028 and U+2029 into two more), so a payload of
// MaxPayloadBytes was kept at six times its size: 20 POSTs of 1 MiB of pings
// grew one session's mailbox by ~145 MB in Redis, a full mailbox ~390 MB.
// What a log keeps must be about the size the client sent.
func TestRecordsKeepPayloadsAtTheirOwnSize(t *testing.T) {
	const maxPayload = 16 << 10
	for _, fill := range []string{"<", ">", "&", "\u2028"} {
		t.Run(fill, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.MaxPayloadBytes = maxPayload })
			a := h.connect("1", "2.0.0")
			a.send(`["1","1","room:a","phx_join",{}]`)
			a.poll()
			text := strings.Repeat(fill, (maxPayload-8)/len(fill))
			payload := `{"x":"` + text + `"}`
			a.send(`["1","2","room:a","ping",`+payload+`]`, `["1","3","room:a","shout",`+payload+`]`)
			got := a.poll()
			if len(got) != 3 {
				t.Fatalf("got %d frames, want the ping's reply, the shout's and the broadcast", len(got))
			}
			var reply []json.RawMessage
			if err := json.Unmarshal([]byte(got[0]), &reply); err != nil || len(reply) != 5 {
				t.Fatalf("reply %.100s: %v", got[0], err)
			}
			var p struct{ Response struct{ X string } }
			if err := json.Unmarshal(reply[4], &p); err != nil || p.Response.X != text {
				t.Fatalf("the echo does not carry the payload back: %v", err)
			}
			for _, topic := range []string{mailboxTopic(a.tok.SessionID), channelTopic("room:a")} {
				bs, err := h.broker.ReadMany(context.Background(), []topics.ReadRequest{{Topic: topic, Limit: 1000}})
				if err != nil {
					t.Fatal(err)
				}
				largest := 0
				for _, r := range bs[0].Records {
					largest = max(largest, len(r.Data))
				}
				if largest > len(payload)+1024 {
					t.Errorf("a record of a %d-byte payload in %s takes %d bytes", len(payload), topic, largest)
				}
			}
		})
	}
}
