package topics_test

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicegw/sluice/topics"
	"github.com/sluicegw/sluice/topics/brokertest"
)

var _ topics.Broker = (*topics.MemoryBroker)(nil)

func TestMemoryBrokerConformance(t *testing.T) {
	brokertest.Run(t, func(t *testing.T, maxLen int, budgets ...topics.ByteBudget) topics.Broker {
		return topics.NewMemoryBroker(maxLen, time.Hour, budgets...)
	})
}

func mustPublish(t *testing.T, b topics.Broker, topic string, data ...[]byte) uint64 {
	t.Helper()
	seq, err := b.Publish(t.Context(), topic, data...)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return seq
}

func mustRead(t *testing.T, b topics.Broker, topic string, after uint64, limit int) topics.Batch {
	t.Helper()
	batch, err := b.Read(t.Context(), topic, after, limit)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return batch
}

func mustHead(t *testing.T, b topics.Broker, topic string) uint64 {
	t.Helper()
	h, err := b.Head(t.Context(), topic)
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	return h
}

func mustDelete(t *testing.T, b topics.Broker, topic string) {
	t.Helper()
	if err := b.Delete(t.Context(), topic); err != nil {
		t.Fatalf("Delete: %v", err)
	}
}

func numbered(first, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%d", first+i)
	}
	return out
}

// wantRecords asserts that batch holds the records firstSeq.. with data want.
func wantRecords(t *testing.T, what string, batch topics.Batch, firstSeq uint64, want [][]byte, gap bool) {
	t.Helper()
	if batch.Gap != gap {
		t.Errorf("%s: Gap = %v, want %v", what, batch.Gap, gap)
	}
	if len(batch.Records) != len(want) {
		t.Fatalf("%s: %d records, want %d", what, len(batch.Records), len(want))
	}
	for i, r := range batch.Records {
		if r.Seq != firstSeq+uint64(i) || !bytes.Equal(r.Data, want[i]) {
			t.Errorf("%s: record %d = %d:%q, want %d:%q", what, i, r.Seq, r.Data, firstSeq+uint64(i), want[i])
		}
	}
}

func TestMemoryBrokerTrimsToMaxLen(t *testing.T) {
	b := topics.NewMemoryBroker(3, time.Hour)
	const topic = "t:trim"
	h := mustHead(t, b, topic)
	all := numbered(1, 12)
	for _, d := range all[:5] {
		mustPublish(t, b, topic, d)
	}
	wantRecords(t, "after 5 single publishes", mustRead(t, b, topic, h, 100), h+3, all[2:5], true)
	mustPublish(t, b, topic, all[5:12]...) // one batch larger than the bound
	wantRecords(t, "after a batch of 7", mustRead(t, b, topic, h, 100), h+10, all[9:12], true)
	wantRecords(t, "from the record before the oldest kept", mustRead(t, b, topic, h+9, 100), h+10, all[9:12], false)
	wantRecords(t, "from inside the window", mustRead(t, b, topic, h+10, 100), h+11, all[10:12], false)
}

func TestMemoryBrokerDefaultMaxLen(t *testing.T) {
	b := topics.NewMemoryBroker(0, time.Hour) // maxLen <= 0 means 1000
	const topic = "t:default"
	h := mustHead(t, b, topic)
	all := numbered(1, 1005)
	mustPublish(t, b, topic, all...)
	wantRecords(t, "after 1005 records", mustRead(t, b, topic, h, 2000), h+6, all[5:], true)
}

func TestMemoryBrokerSweepForgetsIdleTopics(t *testing.T) {
	// With a retention of 1ns every topic is idle by the time Sweep runs.
	idle := topics.NewMemoryBroker(10, time.Nanosecond)
	mustPublish(t, idle, "t:a", []byte("a"))
	mustPublish(t, idle, "t:b", []byte("b"))
	mustHead(t, idle, "t:c") // Head alone creates the topic: it is swept as well
	time.Sleep(time.Millisecond)
	if n := idle.Sweep(); n != 3 {
		t.Errorf("Sweep forgot %d idle topics, want 3", n)
	}
	if n := idle.Sweep(); n != 0 {
		t.Errorf("second Sweep forgot %d topics, want 0", n)
	}

	// With an hour of retention nothing is idle yet.
	busy := topics.NewMemoryBroker(10, time.Hour)
	h := mustHead(t, busy, "t:a")
	mustPublish(t, busy, "t:a", []byte("a"))
	if n := busy.Sweep(); n != 0 {
		t.Errorf("Sweep forgot %d recently published topics, want 0", n)
	}
	wantRecords(t, "after Sweep", mustRead(t, busy, "t:a", h, 100), h+1, [][]byte{[]byte("a")}, false)

	// A retention <= 0 never forgets.
	forever := topics.NewMemoryBroker(10, 0)
	h = mustHead(t, forever, "t:a")
	mustPublish(t, forever, "t:a", []byte("a"))
	time.Sleep(time.Millisecond)
	if n := forever.Sweep(); n != 0 {
		t.Errorf("Sweep with no retention forgot %d topics, want 0", n)
	}
	wantRecords(t, "after Sweep without retention", mustRead(t, forever, "t:a", h, 100), h+1, [][]byte{[]byte("a")}, false)
}

// sweptThenRecreated publishes to a topic of a broker that forgets idle
// topics, sweeps it, publishes again, and checks that old cursors read as a
// Gap and the new records are numbered above the old ones. Without burst it
// publishes 5 records; with burst, at least 25000 and more records than twice
// the microseconds elapsed (for at most a second), so that the topic's head is
// ahead of a microsecond clock when it is recreated.
func sweptThenRecreated(t *testing.T, burst bool) {
	t.Helper()
	b := topics.NewMemoryBroker(10, time.Nanosecond)
	const topic = "t:swept"
	data := numbered(0, 500) // built first, so that the publishes are a burst
	h := mustHead(t, b, topic)
	var oldHead uint64
	n := 0
	if !burst {
		oldHead = mustPublish(t, b, topic, data[:5]...)
		n = 5
	}
	start := time.Now()
	for burst && (n < 25000 || n <= 2*int(time.Since(start).Microseconds())+5000 && time.Since(start) < time.Second) {
		oldHead = mustPublish(t, b, topic, data...)
		n += len(data)
	}
	if oldHead != h+uint64(n) {
		t.Fatalf("Head after %d records = %d, want %d", n, oldHead, h+uint64(n))
	}
	cursor := oldHead - 2 // a reader that missed the last 2 records
	time.Sleep(time.Millisecond)
	if got := b.Sweep(); got != 1 {
		t.Fatalf("Sweep forgot %d topics, want 1", got)
	}
	if batch := mustRead(t, b, topic, cursor, 100); !batch.Gap || len(batch.Records) != 0 {
		t.Errorf("Read(old cursor) of a swept topic = Gap %v, %d records; want Gap, none", batch.Gap, len(batch.Records))
	}
	if nh := mustHead(t, b, topic); nh < oldHead {
		t.Errorf("Head of the recreated topic = %d, below the old head %d", nh, oldHead)
	}
	seq := mustPublish(t, b, topic, []byte("new"))
	if seq <= oldHead {
		t.Errorf("first record of the recreated topic has Seq %d, want above the old head %d", seq, oldHead)
	}
	batch := mustRead(t, b, topic, cursor, 100)
	if !batch.Gap {
		t.Errorf("Read(old cursor %d) of the recreated topic: no Gap, %d records (silent loss)", cursor, len(batch.Records))
	}
	for _, r := range batch.Records {
		if r.Seq <= oldHead {
			t.Errorf("Read(old cursor) returned Seq %d, not above the old head %d", r.Seq, oldHead)
		}
	}
}

func TestMemoryBrokerSweptTopicRecreatedAboveOldSequence(t *testing.T) {
	sweptThenRecreated(t, false)
}

// A topic that received more records than microseconds elapsed since it was
// created has a head ahead of the clock; its recreation must still start
// above it.
func TestMemoryBrokerSweptBurstTopicRecreatedAboveOldSequence(t *testing.T) {
	sweptThenRecreated(t, true)
}

// A listener told to Notify calls its function on each wake-up, including
// one that was pending when Notify was called, and no longer sends on C.
func TestListenerNotify(t *testing.T) {
	b := topics.NewMemoryBroker(10, time.Hour)
	l := b.Listen("t:n")
	defer l.Close()
	ctx := context.Background()
	if _, err := b.Publish(ctx, "t:n", []byte("pending")); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	l.Notify(func() { calls.Add(1) })
	if calls.Load() != 1 {
		t.Fatalf("the pending wake-up: %d calls, want 1", calls.Load())
	}
	for range 3 {
		if _, err := b.Publish(ctx, "t:n", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 4 {
		t.Errorf("after 3 more publishes: %d calls, want 4", calls.Load())
	}
	select {
	case <-l.C:
		t.Error("a notified listener also got a value on C")
	default:
	}
	l.Close()
	if _, err := b.Publish(ctx, "t:n", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 4 {
		t.Errorf("a closed listener was notified")
	}
}
