package topics

import (
	"context"
	"errors"
	"strings"
)

// ErrClosed is returned by a Broker that has been closed.
var ErrClosed = errors.New("topics: broker closed")

// Record is one published message: its position in the topic's log and the
// publisher's opaque bytes.
type Record struct {
	Seq  uint64
	Data []byte
}

// Batch is the result of a Read.
type Batch struct {
	// Records holds the records after the requested position, oldest first.
	Records []Record
	// Head is the sequence number of the newest record in the log.
	Head uint64
	// Gap reports that records after the requested position were already
	// dropped from the bounded log: the reader missed messages.
	Gap bool
}

// ByteBudget bounds in bytes the log of every topic whose name starts with
// Prefix, on top of the bound in records that every log has: the records kept
// in such a log add up to at most MaxBytes bytes of Data. A Publish that would
// take the log over its budget drops its oldest records, exactly as the bound
// in records does, so a reader behind them gets a Gap, never a silent loss.
//
// The newest record is always kept, even alone over the budget: a record
// larger than MaxBytes replaces the whole log rather than being refused, so a
// publisher is never told that an append succeeded when nothing can read it,
// and a reader at the head still receives it.
//
// A budget is for logs that one party can fill, such as a session's own
// mailbox: their bound in records times the largest record may be far more
// memory than they need.
type ByteBudget struct {
	// Prefix selects the topics; "" selects every topic.
	Prefix string
	// MaxBytes is the most bytes of records kept per topic; <= 0: no budget.
	MaxBytes int
}

// budgetFor returns the byte budget of topic under budgets: that of the
// first one whose prefix it has, 0 (none) if none.
func budgetFor(budgets []ByteBudget, topic string) int {
	for _, b := range budgets {
		if strings.HasPrefix(topic, b.Prefix) {
			return max(b.MaxBytes, 0)
		}
	}
	return 0
}

// keptOfBatch returns how many of the newest records of a batch a log keeps
// right after appending it, under its bound in records and its byte budget
// (0: none), whatever it held before: at least one, unless data is empty.
func keptOfBatch(data [][]byte, maxLen, budget int) int {
	n := min(len(data), maxLen)
	if budget <= 0 || n == 0 {
		return n
	}
	k, size := 1, len(data[len(data)-1])
	for k < n && size+len(data[len(data)-1-k]) <= budget {
		size += len(data[len(data)-1-k])
		k++
	}
	return k
}

// Broker is a set of bounded, ordered topic logs shared by every instance,
// with wake-ups for readers waiting on this instance.
//
// Sequence numbers grow by one per record, so a reader that remembers the
// last Seq it saw can resume exactly; a reader starts from Head. A topic that
// nobody publishes to for the retention period is forgotten; when it is
// created again its sequence starts above every earlier one, so an old cursor
// reads as a Gap, never as a silent skip.
type Broker interface {
	// Publish appends data to topic's log, in order, and wakes the listeners of
	// topic on every instance. It returns the Seq of the last record appended.
	Publish(ctx context.Context, topic string, data ...[]byte) (uint64, error)
	// Read returns at most limit records of topic with Seq > after.
	Read(ctx context.Context, topic string, after uint64, limit int) (Batch, error)
	// ReadMany performs several Reads, in one round trip where the broker
	// is remote. Its batches are in the order of reqs.
	// It keeps no reference to reqs after it returns: callers reuse it.
	ReadMany(ctx context.Context, reqs []ReadRequest) ([]Batch, error)
	// Head returns the Seq of the newest record of topic: the cursor from which
	// a new reader receives everything published after this call.
	Head(ctx context.Context, topic string) (uint64, error)
	// Delete forgets topic's log.
	Delete(ctx context.Context, topic string) error
	// Listen registers interest in topics on this instance. The listener's
	// channel receives a value (coalesced) whenever one of them is published
	// to. Close the listener when done.
	Listen(topics ...string) *Listener
}

// ReadRequest is one read of a ReadMany: the records of Topic with Seq >
// After, at most Limit of them (all, if Limit <= 0).
type ReadRequest struct {
	Topic string
	After uint64
	Limit int
	// Recent allows a remote broker to answer from what this instance has
	// heard of the topic's publishes, even that there is nothing new,
	// without asking the store: for a reader just woken by a listener,
	// whose wake-up told what is new. A broker that can lose wake-ups (a
	// pub/sub reconnect) wakes every listener once it hears again, and
	// answers their Recent reads from the store then.
	Recent bool
	// Acked says the topic's only reader has every record up to After and
	// will never read them again (a session's mailbox, read after the
	// cursor its client presented): the broker drops them, so that a log
	// of replies does not keep what was delivered for its retention
	// period. A reader that then reads from an older cursor gets a Gap.
	// An After past the topic's head acknowledges nothing (no reader was
	// handed such a cursor). The read itself is answered as without Acked.
	Acked bool
}
