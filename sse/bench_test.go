package sse_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/testroom"
)

// plainHandler accepts every join and tracks no presence: the benchmark's
// subscribers join without a presence diff to everyone before them.
type plainHandler struct{}

func (plainHandler) Join(*gateway.Context, json.RawMessage) gateway.Reply { return gateway.Ok(nil) }

func (plainHandler) HandleIn(*gateway.Context, string, json.RawMessage) gateway.Reply {
	return gateway.NoReply
}

// BenchmarkParkedFanout measures the fan-out of one broadcast to 1,000
// parked SSE streams of one topic over loopback TCP, from the broadcast to
// the last stream's client reading it: waking, collecting, encoding and
// writing per stream, and the clients' reads (the same in every run). Each
// iteration waits for every delivery, so ns/delivery also bounds the
// latency floor: the last subscriber gets a broadcast about subscribers ×
// ns/delivery after it was made. allocs/op are per broadcast: divide by
// 1,000 for allocations per delivery. cpu-ns/delivery is the CPU the
// process (server and clients) spent per delivery.
func BenchmarkParkedFanout(b *testing.B) {
	const subscribers = 1000
	e := newEnv(b, envConfig{Heartbeat: time.Hour, MaxLifetime: time.Hour, Plain: plainHandler{}})
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	// delivered counts the broadcasts' frames the clients read; the one
	// that reads the target-th signals all.
	var delivered, target atomic.Int64
	all := make(chan struct{}, 1)
	target.Store(-1)
	var wg sync.WaitGroup
	conns := make([]net.Conn, subscribers)
	joined := make(chan struct{}, subscribers)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
		tok := testroom.UserToken(b, testSecret, fmt.Sprint(i+1))
		fmt.Fprintf(c, "GET %s?vsn=2.0.0&join=plain:bench&token=%s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", ssePath, qe(tok), addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				line := sc.Bytes()
				switch {
				case bytes.HasPrefix(line, []byte(`data: [null,null,"plain:bench","news"`)):
					if delivered.Add(1) == target.Load() {
						all <- struct{}{}
					}
				case bytes.HasPrefix(line, []byte(`data: ["join:1","join:1","plain:bench","phx_reply"`)):
					joined <- struct{}{}
				}
			}
		}()
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	for range subscribers {
		select {
		case <-joined:
		case <-time.After(time.Minute):
			b.Fatal("the streams did not all join within a minute")
		}
	}
	ctx := context.Background()
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		n++
		target.Store(int64(n * subscribers))
		if err := e.gw.Broadcast(ctx, "plain:bench", "news", map[string]int{"n": n}); err != nil {
			b.Fatal(err)
		}
		select {
		case <-all:
		case <-time.After(time.Minute):
			b.Fatalf("broadcast %d: %d of %d deliveries within a minute", n, delivered.Load()-int64((n-1)*subscribers), subscribers)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*subscribers), "ns/delivery")
	// The process's CPU (server and clients): on a machine shared with
	// other work, a steadier measure than the wall clock.
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(n*subscribers), "cpu-ns/delivery")
}

// cpuTime is the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
