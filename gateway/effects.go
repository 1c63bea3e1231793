package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/sluicegw/sluice/topics"
)

// record is what the gateway stores in a broker log: a message, when it was
// made (to merge a session's mailbox and topics in order), and for
// broadcast_from the channel that must not receive it.
type record struct {
	Time int64  `json:"ts"`
	From string `json:"f,omitempty"`
	Message
}

func encodeRecord(m *Message, from string) []byte {
	b, _ := marshalJSON(record{Time: time.Now().UnixNano(), From: from, Message: *m})
	return b
}

func decodeRecord(data []byte) (*record, error) {
	r := &record{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	return r, nil
}

// effects collects what handling a batch of messages sends, in order, so that
// it is published after the session is saved and in the order it was made.
type effects struct {
	items []PendingRecord
	// storeErr is the first store or broker error that made a message
	// fail (a join that could not read its channel's head): a client told
	// "join crashed" retries, but a connect that joins should rather fail
	// whole, retryably (see ConnectAndHandle).
	storeErr error
}

// storeFailed records err as a store failure of the batch.
func (fx *effects) storeFailed(err error) {
	if fx.storeErr == nil {
		fx.storeErr = err
	}
}

// mailbox queues m for the session's own client.
//
// The mailbox is a broker log like a topic's, bounded in count (--history
// records) and, with a topics.ByteBudget on MailboxTopicPrefix, in bytes
// (--mailbox-bytes), the oldest records dropped: a client that reads after
// that gets phx_error on its channels (see collect). Its records are as
// large as what makes them: the gateway's own replies (heartbeat, unmatched
// topic, leave, errors) carry at most a topic and two refs of MaxFieldBytes
// each, so under 1 KiB; a handler's replies and pushes are as large as the
// handler makes them (an echo of a client payload is within
// MaxPayloadBytes, a join reply with history may be larger).
func (fx *effects) mailbox(sessionID string, m *Message) {
	fx.items = append(fx.items, PendingRecord{mailboxTopic(sessionID), encodeRecord(m, "")})
}

// mailboxed reports whether the effects hold a record for the session's
// mailbox.
func (fx *effects) mailboxed(sessionID string) bool {
	mb := mailboxTopic(sessionID)
	for _, e := range fx.items {
		if e.Topic == mb {
			return true
		}
	}
	return false
}

// eventSessionChanged is a mailbox record that only wakes the session's
// subscriptions to reload it; clients never see it.
const eventSessionChanged = "sluice_session_changed"

func (fx *effects) topic(topic, event string, payload json.RawMessage, from string) {
	m := &Message{Topic: topic, Event: event, Payload: payload}
	fx.items = append(fx.items, PendingRecord{channelTopic(topic), encodeRecord(m, from)})
}

// flush publishes the effects in order; see publishRecords.
func (fx *effects) flush(ctx context.Context, g *Gateway) error {
	items := fx.items
	fx.items = nil
	_, err := publishRecords(ctx, g.cfg.Broker, items)
	return err
}

// publishRecords publishes records in order, one broker call per run of
// records bound for the same topic. It returns how many records are known
// published: on an error, the records of the failed call may have been
// published too (a timeout says nothing either way), those after it were not.
func publishRecords(ctx context.Context, b topics.Broker, records []PendingRecord) (published int, err error) {
	for published < len(records) {
		run := records[published:]
		n := 1
		for n < len(run) && run[n].Topic == run[0].Topic {
			n++
		}
		data := make([][]byte, n)
		for i := range n {
			data[i] = run[i].Data
		}
		if _, err := b.Publish(ctx, run[0].Topic, data...); err != nil {
			return published, fmt.Errorf("publish to %s: %w", run[0].Topic, err)
		}
		published += n
	}
	return published, nil
}
