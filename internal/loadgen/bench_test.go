package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"
)

// BenchmarkSSEReceive measures one SSE client reading and checking one
// broadcast event: what every delivery costs the tool.
func BenchmarkSSEReceive(b *testing.B) {
	cfg := DefaultConfig()
	e := &engine{cfg: &cfg, event: "bench", sent: nil}
	e.measuring.Store(true)
	c := &sseClient{}
	c.e = e
	c.names, c.topics = []string{"bench:0"}, []int{0}
	c.joinRef, c.joined, c.rejoin = []string{"join:1"}, []bool{true}, []bool{false}
	c.nJoined = 1
	var stream bytes.Buffer
	now := time.Now().UnixNano()
	for i := range b.N {
		fmt.Fprintf(&stream, "id: 0123456789abcdef0123456789abcdef.17957036174431%d.0-17957036174434%d\ndata: [null,null,\"bench:0\",\"bench\",{\"p\":1,\"s\":%d,\"t\":%d,\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}]\n\n", i, i, i+1, now)
	}
	c.events.br = bufio.NewReaderSize(&stream, sseReadBuffer)
	b.ReportAllocs()
	b.ResetTimer()
	_ = c.read(context.Background())
	if c.check.Unique != int64(b.N) {
		b.Fatalf("checked %d of %d", c.check.Unique, b.N)
	}
}

// BenchmarkLongPollMessages measures handling a poll answer of 10 messages
// (building the answer included).
func BenchmarkLongPollMessages(b *testing.B) {
	cfg := DefaultConfig()
	e := &engine{cfg: &cfg, event: "bench"}
	e.measuring.Store(true)
	c := &lpClient{}
	c.e = e
	c.names, c.topics = []string{"bench:0"}, []int{0}
	c.joinRef, c.joined, c.rejoin = []string{"j1"}, []bool{true}, []bool{false}
	c.nJoined = 1
	now := time.Now().UnixNano()
	b.ReportAllocs()
	var body []byte
	for i := range b.N {
		body = append(body[:0], `{"messages":[`...)
		for k := range 10 {
			if k > 0 {
				body = append(body, ',')
			}
			body = append(body, `"[null,null,\"bench:0\",\"bench\",{\"p\":1,\"s\":`...)
			body = strconv.AppendInt(body, int64(i*10+k+1), 10)
			body = append(body, `,\"t\":`...)
			body = strconv.AppendInt(body, now, 10)
			body = append(body, `}]"`...)
		}
		body = append(body, `],"status":200,"token":"0123456789abcdef.12.0-34"}`...)
		env, err := parseEnvelope(body)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.messages(env.messages, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	if c.check.Unique != int64(b.N)*10 {
		b.Fatalf("checked %d of %d", c.check.Unique, b.N*10)
	}
}
