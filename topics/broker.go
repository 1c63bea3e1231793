package topics

import (
	"context"
	"errors"
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
	// whose wake-up told what is new. A wake-up lost to a reconnect is then
	// noticed only by a later read without Recent, so readers must make one
	// now and then.
	Recent bool
}
