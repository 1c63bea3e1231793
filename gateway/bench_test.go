package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/sluicegw/sluice/topics"
)

func BenchmarkV2Encode(b *testing.B) {
	m := &Message{JoinRef: str("1"), Ref: str("42"), Topic: "sala:lobby", Event: "mensaje_recibido",
		Payload: json.RawMessage(`{"id":1,"contenido":"hola a todos","autor":"Carlos","timestamp":"2026-11-26T14:33:38.44Z"}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (V2{}).Encode(m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkV2Decode(b *testing.B) {
	frame := []byte(`["1","42","sala:lobby","nuevo_mensaje",{"contenido":"hola a todos"}]`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (V2{}).Decode(frame); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkV1Encode(b *testing.B) {
	m := &Message{Ref: str("42"), Topic: "sala:lobby", Event: "phx_reply", Payload: json.RawMessage(`{"status":"ok","response":{}}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (V1{}).Encode(m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFanout measures the in-process fan-out of one broadcast to
// 10,000 sessions joined to one topic on this instance, each read through a
// Subscription as an SSE stream reads it: the cost per delivered message
// (waking, collecting it for the subscriber, encoding it), with the memory
// store and broker.
func BenchmarkFanout(b *testing.B) {
	router := &topics.Router[Handler]{}
	router.Add("room:*", testRoom{})
	store := NewMemoryStore()
	gw, err := New(Config{
		Router: router, Sessions: store, Presence: store, Broker: topics.NewMemoryBroker(1000, time.Hour),
		Authenticate: func(_ context.Context, info ConnectInfo) (Identity, error) {
			return Identity{UserID: json.RawMessage(info.Token)}, nil
		},
		SessionTimeout: time.Hour,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const subscribers = 10000
	subs := make([]*Subscription, subscribers)
	for i := range subs {
		tok, err := gw.Connect(ctx, ConnectInfo{Token: fmt.Sprint(i + 1), Vsn: "2.0.0"})
		if err != nil {
			b.Fatal(err)
		}
		s, _ := store.Load(ctx, tok.SessionID)
		head, _ := gw.cfg.Broker.Head(ctx, channelTopic("room:bench"))
		s.Channels = map[string]*ChannelState{"room:bench": {Topic: "room:bench", JoinRef: str("1"), Since: head}}
		s.NextSlot = 1
		if err := store.Save(ctx, s); err != nil {
			b.Fatal(err)
		}
		if subs[i], err = gw.Subscribe(ctx, tok); err != nil {
			b.Fatal(err)
		}
		defer subs[i].Close()
	}
	payload := json.RawMessage(`{"id":1,"contenido":"hola a todos","autor":"Carlos"}`)
	b.ReportAllocs()
	b.ResetTimer()
	delivered := 0
	for b.Loop() {
		if err := gw.Broadcast(ctx, "room:bench", "mensaje_recibido", payload); err != nil {
			b.Fatal(err)
		}
		for i, sub := range subs {
			d, err := sub.Next(ctx, time.Second)
			if err != nil || len(d.Frames) != 1 {
				b.Fatalf("subscriber %d: %d frames, %v", i, len(d.Frames), err)
			}
			delivered++
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(delivered), "ns/delivery")
}
