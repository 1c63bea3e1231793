package topics

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// A log whose records Sweep dropped (its topic quiet for the retention)
// holds no bytes: a budget's worth published afterwards is kept whole.
func TestMemoryBrokerSweptRecordsLeaveTheBudget(t *testing.T) {
	now := time.Now()
	b := NewMemoryBroker(100, time.Minute, ByteBudget{Prefix: "m:", MaxBytes: 100})
	b.now = func() time.Time { return now }
	ctx := context.Background()
	const topic = "m:quiet"
	ten := bytes.Repeat([]byte("x"), 10)
	for range 10 {
		if _, err := b.Publish(ctx, topic, ten); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(2 * time.Minute) // past the retention, before the topic is forgotten
	if n := b.Sweep(); n != 0 {
		t.Fatalf("Sweep forgot %d topics, want 0 (records dropped only)", n)
	}
	h, _ := b.Head(ctx, topic)
	for range 10 {
		if _, err := b.Publish(ctx, topic, ten); err != nil {
			t.Fatal(err)
		}
	}
	batch, _ := b.Read(ctx, topic, h, 0)
	if len(batch.Records) != 10 || batch.Gap {
		t.Errorf("after Sweep, 10 records of 10 bytes under a 100-byte budget: %d kept, Gap %v; want all 10, no Gap", len(batch.Records), batch.Gap)
	}
}
