// Package brokertest is the conformance suite that every topics.Broker
// implementation must pass (docs/architecture.md, invariant 7): the memory broker and the
// Redis broker run the same subtests, so that the gateway can rely on one
// behaviour whichever store serves it.
//
// The suite checks what the gateway relies on: sequence numbers that grow by
// exactly one per record, ordered reads from a cursor, a Gap (never a silent
// skip) for a reader behind the bounded log or holding a cursor of a deleted
// topic, byte budgets that bound a log as its bound in records does,
// independent topics, listeners that wake on publish, and records whose bytes
// come back unchanged.
package brokertest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluicegw/sluice/topics"
)

// NewBroker returns a fresh, empty broker for one subtest. The broker must keep
// exactly the newest maxLen records of each topic (the suite asks for small
// values, such as 10, to reach the bound quickly), apply budgets as
// topics.ByteBudget says, and must not forget a topic on its own while the
// subtest runs (a retention of an hour or more is fine). It must be isolated
// from the brokers of other subtests: nothing published to one is visible to
// another. Register any cleanup with t.Cleanup.
type NewBroker func(t *testing.T, maxLen int, budgets ...topics.ByteBudget) topics.Broker

// wakeTimeout bounds the wait for a wake-up that must come. It is only
// reached when the broker is broken; a correct broker wakes at once (in
// process) or within a network round trip.
const wakeTimeout = 5 * time.Second

// Run runs the conformance subtests, each against its own broker made by
// newBroker.
func Run(t *testing.T, newBroker NewBroker) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, nb NewBroker)
	}{
		{"PublishReturnsLastSeq", testPublishReturnsLastSeq},
		{"PublishKeepsOrder", testPublishKeepsOrder},
		{"ReadAfterCursor", testReadAfterCursor},
		{"ReadHonoursLimit", testReadHonoursLimit},
		{"ReadAtHead", testReadAtHead},
		{"ReadNeverUsedTopic", testReadNeverUsedTopic},
		{"HeadOfNewTopicThenPublish", testHeadOfNewTopicThenPublish},
		{"ReaderBehindBoundedLogGetsGap", testReaderBehindBoundedLog},
		{"ByteBudgetTrimsOldest", testByteBudgetTrimsOldest},
		{"ByteBudgetKeepsOversizedRecordAlone", testByteBudgetOversizedRecord},
		{"ByteBudgetFollowsModel", testByteBudgetFollowsModel},
		{"ByteBudgetAfterDelete", testByteBudgetAfterDelete},
		{"AckedReadDropsAcknowledged", testAckedRead},
		{"DeleteForgetsTopic", testDeleteForgetsTopic},
		{"RecreatedTopicStartsAboveOldSequence", testRecreatedTopicStartsAbove},
		{"TopicsAreIndependent", testTopicsAreIndependent},
		{"ListenWakesOnPublish", testListenWakesOnPublish},
		{"ListenIgnoresOtherTopics", testListenIgnoresOtherTopics},
		{"ListenCoalesces", testListenCoalesces},
		{"ListenCloseStopsWakeUps", testListenCloseStops},
		{"ConcurrentPublishers", testConcurrentPublishers},
		{"DataIsReturnedUnchanged", testDataUnchanged},
		{"PublishCopiesCallerData", testPublishCopiesData},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newBroker) })
	}
}

// --- helpers ---

func publish(t *testing.T, b topics.Broker, topic string, data ...[]byte) uint64 {
	t.Helper()
	seq, err := b.Publish(t.Context(), topic, data...)
	if err != nil {
		t.Fatalf("Publish(%q, %d records): %v", topic, len(data), err)
	}
	return seq
}

func read(t *testing.T, b topics.Broker, topic string, after uint64, limit int) topics.Batch {
	t.Helper()
	batch, err := b.Read(t.Context(), topic, after, limit)
	if err != nil {
		t.Fatalf("Read(%q, after=%d, limit=%d): %v", topic, after, limit, err)
	}
	return batch
}

func head(t *testing.T, b topics.Broker, topic string) uint64 {
	t.Helper()
	h, err := b.Head(t.Context(), topic)
	if err != nil {
		t.Fatalf("Head(%q): %v", topic, err)
	}
	return h
}

func del(t *testing.T, b topics.Broker, topic string) {
	t.Helper()
	if err := b.Delete(t.Context(), topic); err != nil {
		t.Fatalf("Delete(%q): %v", topic, err)
	}
}

// msgs returns n records "<prefix>-<i>", i from first.
func msgs(prefix string, first, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%s-%d", prefix, first+i)
	}
	return out
}

// checkBatch asserts that batch holds exactly the records firstSeq,
// firstSeq+1, ... with data want, and the given head and gap.
func checkBatch(t *testing.T, what string, batch topics.Batch, firstSeq uint64, want [][]byte, wantHead uint64, wantGap bool) {
	t.Helper()
	if batch.Head != wantHead {
		t.Errorf("%s: Head = %d, want %d", what, batch.Head, wantHead)
	}
	if batch.Gap != wantGap {
		t.Errorf("%s: Gap = %v, want %v", what, batch.Gap, wantGap)
	}
	if len(batch.Records) != len(want) {
		t.Errorf("%s: got %d records %s, want %d from seq %d", what, len(batch.Records), describe(batch.Records), len(want), firstSeq)
		return
	}
	for i, r := range batch.Records {
		if r.Seq != firstSeq+uint64(i) {
			t.Errorf("%s: record %d has Seq %d, want %d", what, i, r.Seq, firstSeq+uint64(i))
		}
		if !bytes.Equal(r.Data, want[i]) {
			t.Errorf("%s: record %d (Seq %d) has Data %q, want %q", what, i, r.Seq, r.Data, want[i])
		}
	}
}

func describe(recs []topics.Record) string {
	if len(recs) == 0 {
		return "[]"
	}
	if len(recs) > 6 {
		return fmt.Sprintf("[%d:%q ... %d:%q]", recs[0].Seq, recs[0].Data, recs[len(recs)-1].Seq, recs[len(recs)-1].Data)
	}
	var b bytes.Buffer
	b.WriteByte('[')
	for i, r := range recs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%q", r.Seq, r.Data)
	}
	b.WriteByte(']')
	return b.String()
}

// waitWake waits for a wake-up on l, failing the test after wakeTimeout.
func waitWake(t *testing.T, l *topics.Listener, what string) {
	t.Helper()
	select {
	case <-l.C:
	case <-time.After(wakeTimeout):
		t.Fatalf("%s: no wake-up within %v", what, wakeTimeout)
	}
}

// drain empties l's channel without waiting.
func drain(l *topics.Listener) {
	for {
		select {
		case _, ok := <-l.C:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// noWake asserts that l holds no pending wake-up. A closed channel counts as
// "stopped", not as a wake-up.
func noWake(t *testing.T, l *topics.Listener, what string) {
	t.Helper()
	select {
	case _, ok := <-l.C:
		if ok {
			t.Errorf("%s: unexpected wake-up", what)
		}
	default:
	}
}

// --- sequences and reads ---

func testPublishReturnsLastSeq(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic = "t:seq"
	h := head(t, b, topic)
	if got := publish(t, b, topic, []byte("a")); got != h+1 {
		t.Errorf("Publish of 1 record returned %d, want Head+1 = %d", got, h+1)
	}
	if got := publish(t, b, topic, []byte("b"), []byte("c"), []byte("d")); got != h+4 {
		t.Errorf("Publish of 3 records returned %d, want the last record's Seq %d", got, h+4)
	}
	if got := publish(t, b, topic, []byte("e")); got != h+5 {
		t.Errorf("Publish returned %d, want %d", got, h+5)
	}
	if got := head(t, b, topic); got != h+5 {
		t.Errorf("Head = %d after 5 records, want %d", got, h+5)
	}
	checkBatch(t, "Read(head before)", read(t, b, topic, h, 100), h+1, [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("d"), []byte("e")}, h+5, false)
}

func testPublishKeepsOrder(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic = "t:order"
	h := head(t, b, topic)
	first := msgs("m", 0, 7)
	publish(t, b, topic, first...)
	second := msgs("m", 7, 3)
	last := publish(t, b, topic, second...)
	if last != h+10 {
		t.Fatalf("Publish returned %d, want %d", last, h+10)
	}
	checkBatch(t, "Read(all)", read(t, b, topic, h, 100), h+1, append(first, second...), h+10, false)
}

func testReadAfterCursor(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic = "t:cursor"
	h := head(t, b, topic)
	all := msgs("r", 1, 6)
	publish(t, b, topic, all...)
	checkBatch(t, "Read(h+2)", read(t, b, topic, h+2, 100), h+3, all[2:], h+6, false)
	checkBatch(t, "Read(h+5)", read(t, b, topic, h+5, 100), h+6, all[5:], h+6, false)
	checkBatch(t, "Read(h)", read(t, b, topic, h, 100), h+1, all, h+6, false)
}

func testReadHonoursLimit(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic = "t:limit"
	h := head(t, b, topic)
	all := msgs("l", 1, 7)
	publish(t, b, topic, all...)
	checkBatch(t, "Read(h, limit 2)", read(t, b, topic, h, 2), h+1, all[:2], h+7, false)
	checkBatch(t, "Read(h+2, limit 3)", read(t, b, topic, h+2, 3), h+3, all[2:5], h+7, false)
	checkBatch(t, "Read(h+5, limit 3)", read(t, b, topic, h+5, 3), h+6, all[5:], h+7, false)
	checkBatch(t, "Read(h+6, limit 1)", read(t, b, topic, h+6, 1), h+7, all[6:], h+7, false)

	// Paging with the last Seq seen as the next cursor visits every record once.
	var got [][]byte
	cursor := h
	for range 10 {
		batch := read(t, b, topic, cursor, 3)
		if batch.Gap {
			t.Fatalf("paging: Gap at cursor %d", cursor)
		}
		if len(batch.Records) == 0 {
			break
		}
		for _, r := range batch.Records {
			got = append(got, r.Data)
		}
		cursor = batch.Records[len(batch.Records)-1].Seq
	}
	if len(got) != len(all) {
		t.Fatalf("paging by 3 returned %d records, want %d", len(got), len(all))
	}
	for i := range all {
		if !bytes.Equal(got[i], all[i]) {
			t.Errorf("paging: record %d = %q, want %q", i, got[i], all[i])
		}
	}
}

func testReadAtHead(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic = "t:athead"
	h := head(t, b, topic)
	checkBatch(t, "Read(Head) of a fresh topic", read(t, b, topic, h, 100), 0, nil, h, false)
	last := publish(t, b, topic, msgs("x", 0, 4)...)
	checkBatch(t, "Read(Head) after publishing", read(t, b, topic, last, 100), 0, nil, last, false)
	if got := head(t, b, topic); got != last {
		t.Errorf("Head = %d, want %d", got, last)
	}
	// Head is stable while nobody publishes.
	if got := head(t, b, topic); got != last {
		t.Errorf("Head called again = %d, want %d", got, last)
	}
}

func testReadNeverUsedTopic(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	batch := read(t, b, "t:never-used", 0, 100)
	if len(batch.Records) != 0 || batch.Gap {
		t.Errorf("Read(0) of a never-used topic = %d records, Gap %v; want none, no Gap", len(batch.Records), batch.Gap)
	}
}

func testHeadOfNewTopicThenPublish(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic = "t:fresh"
	// Two readers start on a topic nobody used yet, as two sessions joining
	// the same new channel would. Both must see exactly what follows.
	h1 := head(t, b, topic)
	h2 := head(t, b, topic)
	data := msgs("n", 1, 3)
	last := publish(t, b, topic, data...)
	if last <= h1 || last <= h2 {
		t.Fatalf("Publish returned %d, not above the heads %d and %d taken before it", last, h1, h2)
	}
	checkBatch(t, "Read(first Head)", read(t, b, topic, h1, 100), last-2, data, last, false)
	checkBatch(t, "Read(second Head)", read(t, b, topic, h2, 100), last-2, data, last, false)
	if h1 != h2 {
		t.Errorf("Head of an unused topic changed between two calls: %d then %d", h1, h2)
	}
	if last != h1+3 {
		t.Errorf("3 records after Head %d end at %d, want %d", h1, last, h1+3)
	}
}

func testReaderBehindBoundedLog(t *testing.T, nb NewBroker) {
	const maxLen = 10
	b := nb(t, maxLen)
	const topic = "t:bounded"
	h := head(t, b, topic)
	all := msgs("b", 1, 25)
	// One by one, then as a batch larger than the bound, then one by one.
	for _, d := range all[:8] {
		publish(t, b, topic, d)
	}
	publish(t, b, topic, all[8:20]...)
	for _, d := range all[20:] {
		publish(t, b, topic, d)
	}
	last := h + 25
	if got := head(t, b, topic); got != last {
		t.Fatalf("Head = %d, want %d", got, last)
	}
	kept := all[25-maxLen:] // the newest maxLen records: Seq h+16 .. h+25
	checkBatch(t, "Read(h) far behind", read(t, b, topic, h, 100), h+16, kept, last, true)
	checkBatch(t, "Read(h+14) just behind", read(t, b, topic, h+14, 100), h+16, kept, last, true)
	checkBatch(t, "Read(h+15) right before the oldest kept", read(t, b, topic, h+15, 100), h+16, kept, last, false)
	checkBatch(t, "Read(h+20) inside the window", read(t, b, topic, h+20, 100), h+21, all[20:], last, false)
	checkBatch(t, "Read(h, limit 3) behind", read(t, b, topic, h, 3), h+16, kept[:3], last, true)
}

// --- byte budgets ---

// sized returns n records of exactly size bytes each: "<prefix>-<i>" padded
// with dots, i from first.
func sized(prefix string, first, n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		b := fmt.Appendf(nil, "%s-%d", prefix, first+i)
		if len(b) > size {
			panic("brokertest: record label longer than its size")
		}
		out[i] = append(b, bytes.Repeat([]byte{'.'}, size-len(b))...)
	}
	return out
}

// bytesOf returns the bytes of the records' Data.
func bytesOf(recs []topics.Record) int {
	n := 0
	for _, r := range recs {
		n += len(r.Data)
	}
	return n
}

func testByteBudgetTrimsOldest(t *testing.T, nb NewBroker) {
	// 100 bytes for "m:" topics: ten records of 10 bytes, far below the
	// bound of 100 records.
	b := nb(t, 100, topics.ByteBudget{Prefix: "m:", MaxBytes: 100})
	const topic, free = "m:budget", "t:free"
	h, hf := head(t, b, topic), head(t, b, free)
	all := sized("r", 1, 25, 10)
	// One by one, then as a batch larger than the budget, then one by one.
	for _, d := range all[:8] {
		publish(t, b, topic, d)
		publish(t, b, free, d)
	}
	if got := publish(t, b, topic, all[8:20]...); got != h+20 {
		t.Errorf("Publish of a batch over the budget returned %d, want its last Seq %d", got, h+20)
	}
	publish(t, b, free, all[8:20]...)
	for _, d := range all[20:] {
		publish(t, b, topic, d)
		publish(t, b, free, d)
	}
	last := h + 25
	kept := all[15:] // the newest 100 bytes: Seq h+16 .. h+25
	checkBatch(t, "Read(h) far behind", read(t, b, topic, h, 100), h+16, kept, last, true)
	checkBatch(t, "Read(h+14) just behind", read(t, b, topic, h+14, 100), h+16, kept, last, true)
	checkBatch(t, "Read(h+15) right before the oldest kept", read(t, b, topic, h+15, 100), h+16, kept, last, false)
	checkBatch(t, "Read(h+20) inside the window", read(t, b, topic, h+20, 100), h+21, all[20:], last, false)
	checkBatch(t, "Read(h, limit 3) behind", read(t, b, topic, h, 3), h+16, kept[:3], last, true)
	// A topic the budget does not select keeps its records.
	checkBatch(t, "topic without a budget", read(t, b, free, hf, 100), hf+1, all, hf+25, false)

	// A batch larger than the budget alone keeps its newest records that
	// fit: older records of the log go, and so do its own oldest.
	big := sized("big", 1, 4, 40)
	last = publish(t, b, topic, big...)
	checkBatch(t, "after a 160-byte batch", read(t, b, topic, h+25, 100), last-1, big[2:], last, true)
	checkBatch(t, "from the batch's last record not kept", read(t, b, topic, last-2, 100), last-1, big[2:], last, false)
}

// readAcked is one ReadMany of topic after after that acknowledges what is
// up to after.
func readAcked(t *testing.T, b topics.Broker, topic string, after uint64) topics.Batch {
	t.Helper()
	batches, err := b.ReadMany(context.Background(), []topics.ReadRequest{{Topic: topic, After: after, Limit: 100, Acked: true}})
	if err != nil || len(batches) != 1 {
		t.Fatalf("ReadMany(%s, after %d, acked): %d batches, %v", topic, after, len(batches), err)
	}
	return batches[0]
}

// testAckedRead: a read that acknowledges its cursor drops the records up to
// it (a client's mailbox does not keep what it has), answers as a plain
// read, and again the same when retried with the same cursor; an older
// cursor then gets a Gap; the byte budget counts only what is left.
func testAckedRead(t *testing.T, nb NewBroker) {
	b := nb(t, 100, topics.ByteBudget{Prefix: "m:", MaxBytes: 100})
	const topic = "m:ack"
	h := head(t, b, topic)
	all := sized("a", 1, 6, 10)
	publish(t, b, topic, all...)
	// A cursor past the head acknowledges nothing: it was never handed out
	// (a forged or corrupted token), and must not drop what the session's
	// real client has not received.
	readAcked(t, b, topic, h+1000)
	checkBatch(t, "a read after an acked read past the head", read(t, b, topic, h, 100), h+1, all, h+6, false)
	checkBatch(t, "acked read at h+2", readAcked(t, b, topic, h+2), h+3, all[2:], h+6, false)
	checkBatch(t, "the same acked read, retried", readAcked(t, b, topic, h+2), h+3, all[2:], h+6, false)
	checkBatch(t, "a plain read at h+2", read(t, b, topic, h+2, 100), h+3, all[2:], h+6, false)
	checkBatch(t, "a read behind the acknowledged cursor", read(t, b, topic, h, 100), h+3, all[2:], h+6, true)
	// Acknowledging everything leaves nothing, and the log goes on.
	checkBatch(t, "acked read at the head", readAcked(t, b, topic, h+6), 0, nil, h+6, false)
	checkBatch(t, "a read behind everything acknowledged", read(t, b, topic, h+4, 100), 0, nil, h+6, true)
	more := sized("b", 1, 10, 10)
	if got := publish(t, b, topic, more...); got != h+16 {
		t.Fatalf("Publish after everything was acknowledged returned %d, want %d", got, h+16)
	}
	// The budget (100 bytes) holds the ten new records: the acknowledged
	// ones no longer count.
	checkBatch(t, "after acknowledging and publishing the budget's worth", read(t, b, topic, h+6, 100), h+7, more, h+16, false)
	readAcked(t, b, topic, h+11)
	publish(t, b, topic, sized("c", 1, 5, 10)...)
	checkBatch(t, "the budget after a partial acknowledgement", read(t, b, topic, h+11, 100), h+12, append(more[5:], sized("c", 1, 5, 10)...), h+21, false)
}

func testByteBudgetOversizedRecord(t *testing.T, nb NewBroker) {
	b := nb(t, 100, topics.ByteBudget{Prefix: "m:", MaxBytes: 100})
	const topic = "m:oversized"
	h := head(t, b, topic)
	small := sized("s", 1, 3, 20)
	publish(t, b, topic, small...)
	huge := sized("huge", 1, 1, 150)
	hs := publish(t, b, topic, huge...)
	// Kept alone, not refused: the reader at the head before it gets it.
	checkBatch(t, "reader just before the oversized record", read(t, b, topic, h+3, 100), hs, huge, hs, false)
	checkBatch(t, "reader behind the oversized record", read(t, b, topic, h, 100), hs, huge, hs, true)
	// The next record takes its place: it alone is over the budget.
	next := sized("n", 1, 1, 10)
	ns := publish(t, b, topic, next...)
	checkBatch(t, "reader of the oversized record, after one more", read(t, b, topic, hs, 100), ns, next, ns, false)
	checkBatch(t, "reader before the oversized record, after one more", read(t, b, topic, hs-1, 100), ns, next, ns, true)
	// In a batch, the oversized newest record is kept alone too.
	batch := append(sized("b", 1, 2, 10), sized("huge", 2, 1, 150)...)
	bs := publish(t, b, topic, batch...)
	checkBatch(t, "after a batch ending in an oversized record", read(t, b, topic, ns, 100), bs, batch[2:], bs, true)
}

// testByteBudgetFollowsModel publishes records of varied sizes, one by one
// and in batches, to a log bounded both in records and in bytes, and after
// each publish compares the whole log with a model of the rule: the newest
// records that fit both bounds (at least the newest one). A broker whose
// byte count drifted across trims keeps too much or too little.
func testByteBudgetFollowsModel(t *testing.T, nb NewBroker) {
	const maxLen, budget = 8, 200
	b := nb(t, maxLen, topics.ByteBudget{Prefix: "m:", MaxBytes: budget})
	const topic = "m:model"
	h := head(t, b, topic)
	type rec struct {
		seq  uint64
		data []byte
	}
	var model []rec
	seq := h
	// A fixed pseudo-random sequence (a linear congruential generator), so
	// a failure can be replayed.
	x := uint32(7)
	next := func(n uint32) int { x = x*1664525 + 1013904223; return int(x>>16) % int(n) }
	for step := range 150 {
		n := 1 + next(4)
		data := make([][]byte, n)
		for i := range data {
			size := 8 + next(60)
			if next(25) == 0 {
				size = budget + 1 + next(50) // now and then one over the budget
			}
			data[i] = sized(fmt.Sprintf("s%d", step), i, 1, size)[0]
		}
		last := publish(t, b, topic, data...)
		for _, d := range data {
			seq++
			model = append(model, rec{seq, d})
		}
		if last != seq {
			t.Fatalf("step %d: Publish returned %d, want %d", step, last, seq)
		}
		total := 0
		for _, r := range model {
			total += len(r.data)
		}
		for len(model) > 1 && (len(model) > maxLen || total > budget) {
			total -= len(model[0].data)
			model = model[1:]
		}
		want := make([][]byte, len(model))
		for i, r := range model {
			want[i] = r.data
		}
		got := read(t, b, topic, h, 100)
		checkBatch(t, fmt.Sprintf("step %d: Read(h)", step), got, model[0].seq, want, seq, model[0].seq > h+1)
		checkBatch(t, fmt.Sprintf("step %d: Read(before the oldest kept)", step), read(t, b, topic, model[0].seq-1, 100), model[0].seq, want, seq, false)
		if t.Failed() {
			t.Fatalf("step %d: the log holds %d records, %d bytes; the model %d records, %d bytes", step, len(got.Records), bytesOf(got.Records), len(model), total)
		}
	}
}

func testByteBudgetAfterDelete(t *testing.T, nb NewBroker) {
	b := nb(t, 100, topics.ByteBudget{Prefix: "m:", MaxBytes: 100})
	const topic = "m:deleted"
	publish(t, b, topic, sized("old", 1, 10, 10)...)
	del(t, b, topic)
	// The deleted records no longer count: a full budget fits again.
	h := head(t, b, topic)
	fresh := sized("new", 1, 10, 10)
	for _, d := range fresh {
		publish(t, b, topic, d)
	}
	checkBatch(t, "after Delete, a budget's worth", read(t, b, topic, h, 100), h+1, fresh, h+10, false)
	last := publish(t, b, topic, sized("new", 11, 1, 10)...)
	checkBatch(t, "one more drops exactly the oldest", read(t, b, topic, h, 100), h+2, append(fresh[1:], sized("new", 11, 1, 10)...), last, true)
}

func testDeleteForgetsTopic(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic, other = "t:deleted", "t:kept"
	h := head(t, b, topic)
	oh := head(t, b, other)
	publish(t, b, other, []byte("o1"))
	oldHead := publish(t, b, topic, msgs("d", 1, 5)...)
	mid := h + 2 // a reader that saw 2 of the 5 records

	del(t, b, topic)
	batch := read(t, b, topic, mid, 100)
	if !batch.Gap || len(batch.Records) != 0 {
		t.Errorf("Read(old cursor) after Delete = Gap %v, records %s; want Gap and no records", batch.Gap, describe(batch.Records))
	}

	// The topic is used again: an old cursor still reads as a Gap, and the new
	// records are numbered above every old one.
	newData := msgs("new", 1, 2)
	newLast := publish(t, b, topic, newData...)
	if newLast <= oldHead+1 {
		t.Errorf("after Delete, the new records end at Seq %d; want them above the old head %d", newLast, oldHead)
	}
	batch = read(t, b, topic, mid, 100)
	if !batch.Gap {
		t.Errorf("Read(old cursor %d) after Delete and new publishes: no Gap, records %s (silent loss)", mid, describe(batch.Records))
	}
	for _, r := range batch.Records {
		if r.Seq <= oldHead {
			t.Errorf("Read(old cursor) after Delete returned Seq %d, not above the old head %d", r.Seq, oldHead)
		}
	}
	if batch.Head != newLast {
		t.Errorf("Read after Delete: Head = %d, want %d", batch.Head, newLast)
	}
	if n := len(batch.Records); n != 2 || !bytes.Equal(batch.Records[0].Data, newData[0]) || !bytes.Equal(batch.Records[1].Data, newData[1]) {
		t.Errorf("Read(old cursor) after Delete returned %s, want the 2 new records", describe(batch.Records))
	}
	batch = read(t, b, topic, oldHead, 100)
	for _, r := range batch.Records {
		if r.Seq <= oldHead {
			t.Errorf("Read(old head) after Delete returned Seq %d, not above the old head %d", r.Seq, oldHead)
		}
	}

	// Other topics are untouched; deleting an unknown topic is not an error.
	checkBatch(t, "other topic after Delete", read(t, b, other, oh, 100), oh+1, [][]byte{[]byte("o1")}, oh+1, false)
	del(t, b, "t:never-used")
}

func testRecreatedTopicStartsAbove(t *testing.T, nb NewBroker) {
	b := nb(t, 10)
	const topic = "t:burst"
	h := head(t, b, topic)
	// A burst: more records than microseconds elapse (twice as many, with at
	// least 25000 records, for at most a second), so that a sequence that
	// restarts from a clock reading would still be behind this log's head
	// when the topic is recreated.
	const per, minRecords = 500, 25000
	batch := make([][]byte, per)
	for i := range batch {
		batch[i] = []byte("b")
	}
	start := time.Now()
	n := 0
	var oldHead uint64
	for n < minRecords || (uint64(n) <= 2*uint64(time.Since(start).Microseconds())+5000 && time.Since(start) < time.Second) {
		oldHead = publish(t, b, topic, batch...)
		n += per
	}
	if oldHead != h+uint64(n) {
		t.Fatalf("after %d records Head = %d, want %d", n, oldHead, h+uint64(n))
	}
	cursor := oldHead - 5 // a reader that has not yet read the last 5 records
	del(t, b, topic)
	if nh := head(t, b, topic); nh < oldHead {
		t.Errorf("Head of the recreated topic = %d, below the old head %d: old cursors would read new records as old ones", nh, oldHead)
	}
	seq := publish(t, b, topic, []byte("after"))
	if seq <= oldHead {
		t.Errorf("first record of the recreated topic has Seq %d, want above the old head %d", seq, oldHead)
	}
	got := read(t, b, topic, cursor, 100)
	if !got.Gap {
		t.Errorf("Read(old cursor %d) after recreation: no Gap, records %s (silent loss of 5 records)", cursor, describe(got.Records))
	}
	// A broker that numbered the new log below the old head would, once the
	// new log grows past the old cursor, hand the old reader new records as if
	// they followed the ones it saw. Publish until that point (nothing, for a
	// correct broker; skipped if that is more than the burst) and read again.
	if seq < cursor+3 && cursor+3-seq <= uint64(n) {
		for n := cursor + 3 - seq; n > 0; {
			k := min(n, per)
			publish(t, b, topic, batch[:k]...)
			n -= k
		}
	}
	got = read(t, b, topic, cursor, 100)
	if !got.Gap {
		t.Errorf("Read(old cursor %d) once the recreated log grew past it: no Gap, records %s (the 5 unread old records are silently lost)", cursor, describe(got.Records))
	}
}

func testTopicsAreIndependent(t *testing.T, nb NewBroker) {
	b := nb(t, 10)
	ha, hb := head(t, b, "t:a"), head(t, b, "t:b")
	for i := range 12 {
		publish(t, b, "t:a", fmt.Appendf(nil, "a-%d", i))
		if i%3 == 0 {
			publish(t, b, "t:b", fmt.Appendf(nil, "b-%d", i))
		}
	}
	// t:a overflowed its bound; t:b did not and must not have been trimmed by it.
	checkBatch(t, "t:a", read(t, b, "t:a", ha+2, 100), ha+3, msgs("a", 2, 10), ha+12, false)
	checkBatch(t, "t:b", read(t, b, "t:b", hb, 100), hb+1, [][]byte{[]byte("b-0"), []byte("b-3"), []byte("b-6"), []byte("b-9")}, hb+4, false)
	del(t, b, "t:a")
	checkBatch(t, "t:b after deleting t:a", read(t, b, "t:b", hb, 100), hb+1, [][]byte{[]byte("b-0"), []byte("b-3"), []byte("b-6"), []byte("b-9")}, hb+4, false)
}

// --- listeners ---

func testListenWakesOnPublish(t *testing.T, nb NewBroker) {
	b := nb(t, 10)
	l := b.Listen("t:x", "t:y")
	defer l.Close()
	publish(t, b, "t:y", []byte("1"))
	waitWake(t, l, "publish to the second listened topic")
	drain(l)
	publish(t, b, "t:x", []byte("2"))
	waitWake(t, l, "publish to the first listened topic")
	drain(l)
	publish(t, b, "t:x", []byte("3"), []byte("4"))
	waitWake(t, l, "multi-record publish")
}

func testListenIgnoresOtherTopics(t *testing.T, nb NewBroker) {
	b := nb(t, 10)
	l := b.Listen("t:mine")
	defer l.Close()
	// probe listens on the other topic: once it wakes, the publish has
	// reached this instance's listeners, and l must not have woken.
	probe := b.Listen("t:other")
	defer probe.Close()
	publish(t, b, "t:other", []byte("x"))
	waitWake(t, probe, "probe on the published topic")
	noWake(t, l, "listener of another topic")
	// A topic whose name extends a listened one is another topic.
	probe2 := b.Listen("t:mine:2")
	defer probe2.Close()
	publish(t, b, "t:mine:2", []byte("y"))
	waitWake(t, probe2, "probe on t:mine:2")
	noWake(t, l, "listener of t:mine after a publish to t:mine:2")
}

func testListenCoalesces(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	l := b.Listen("t:busy")
	defer l.Close()
	probe := b.Listen("t:busy")
	defer probe.Close()
	// Nobody reads l while 50 publishes happen: publishers must not block on
	// it, and it holds one pending wake-up, not one per publish.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50 {
			if _, err := b.Publish(context.Background(), "t:busy", fmt.Appendf(nil, "%d", i)); err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(wakeTimeout):
		t.Fatal("publishers blocked on a listener that does not read")
	}
	// Once probe woke, wake-ups have reached this instance's listeners; a
	// buffer of one per publish would show here (remote brokers may still be
	// delivering some, which a coalescing listener absorbs).
	waitWake(t, probe, "probe")
	if n := len(l.C); n > 1 {
		t.Errorf("listener holds %d pending wake-ups after 50 publishes; want them coalesced into at most 1", n)
	}
	waitWake(t, l, "coalesced wake-up")
}

func testListenCloseStops(t *testing.T, nb NewBroker) {
	b := nb(t, 10)
	l := b.Listen("t:closing")
	probe := b.Listen("t:closing")
	defer probe.Close()
	publish(t, b, "t:closing", []byte("before"))
	waitWake(t, l, "listener before Close")
	waitWake(t, probe, "probe before Close")
	l.Close()
	l.Close() // a second Close is harmless
	publish(t, b, "t:closing", []byte("after"))
	waitWake(t, probe, "probe after the other listener closed")
	noWake(t, l, "closed listener")
	// Closing a listener that never woke is fine too.
	b.Listen("t:unused", "t:unused2").Close()
}

// --- concurrency and data ---

func testConcurrentPublishers(t *testing.T, nb NewBroker) {
	const goroutines, each = 8, 100
	b := nb(t, goroutines*each)
	const topic = "t:concurrent"
	h := head(t, b, topic)
	seqs := make([][]uint64, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				seq, err := b.Publish(context.Background(), topic, fmt.Appendf(nil, "g%d-%d", g, i))
				if err != nil {
					t.Errorf("goroutine %d: Publish: %v", g, err)
					return
				}
				seqs[g] = append(seqs[g], seq)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var all []uint64
	for g, s := range seqs {
		if !slices.IsSorted(s) {
			t.Errorf("goroutine %d got decreasing sequences from successive publishes", g)
		}
		all = append(all, s...)
	}
	slices.Sort(all)
	for i, s := range all {
		if want := h + 1 + uint64(i); s != want {
			t.Fatalf("the %d sequences returned are not h+1..h+%d: position %d holds %d, want %d (duplicate or hole)", len(all), len(all), i, s, want)
		}
	}
	last := h + goroutines*each
	if got := head(t, b, topic); got != last {
		t.Errorf("Head = %d, want %d", got, last)
	}
	// The log agrees with what each publisher was told.
	batch := read(t, b, topic, h, goroutines*each+10)
	if batch.Gap || len(batch.Records) != goroutines*each {
		t.Fatalf("Read(all) = %d records, Gap %v; want %d, no Gap", len(batch.Records), batch.Gap, goroutines*each)
	}
	bySeq := make(map[uint64]string, len(batch.Records))
	for i, r := range batch.Records {
		if r.Seq != h+1+uint64(i) {
			t.Fatalf("Read(all): record %d has Seq %d, want %d", i, r.Seq, h+1+uint64(i))
		}
		bySeq[r.Seq] = string(r.Data)
	}
	for g, s := range seqs {
		for i, seq := range s {
			if want := fmt.Sprintf("g%d-%d", g, i); bySeq[seq] != want {
				t.Errorf("record %d holds %q, but Publish of %q returned it", seq, bySeq[seq], want)
			}
		}
	}
}

func testDataUnchanged(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic = "t:bytes"
	big := make([]byte, 64<<10)
	for i := range big {
		big[i] = byte(i*7 + i>>8)
	}
	data := [][]byte{
		{},
		{0x00},
		{0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, '\n', '\r', 0x00},           // invalid UTF-8, NULs, newlines
		[]byte("héllo, мир, 世界 🌍"),                                       // multi-byte UTF-8
		[]byte(`{"event":"new_msg","payload":{"body":"\u0000"}}` + "\n"), // JSON
		[]byte("data: x\n\nid: 3\n\n"),                                   // SSE-looking text
		[]byte(" leading and trailing spaces "),
		big,
	}
	h := head(t, b, topic)
	publish(t, b, topic, data...)
	checkBatch(t, "Read", read(t, b, topic, h, 100), h+1, data, h+uint64(len(data)), false)
}

func testPublishCopiesData(t *testing.T, nb NewBroker) {
	b := nb(t, 100)
	const topic = "t:copy"
	h := head(t, b, topic)
	buf := []byte("hello world")
	publish(t, b, topic, buf[:5], buf[6:])
	// The caller reuses its buffer after Publish returned.
	copy(buf, "JELLO_WORLD")
	single := []byte("single")
	publish(t, b, topic, single)
	single[0] = 'X'
	checkBatch(t, "Read after the caller changed its buffers", read(t, b, topic, h, 100), h+1,
		[][]byte{[]byte("hello"), []byte("world"), []byte("single")}, h+3, false)
}
