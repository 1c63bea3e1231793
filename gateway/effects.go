package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
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
	b, _ := json.Marshal(record{Time: time.Now().UnixNano(), From: from, Message: *m})
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
	items []effect
}

type effect struct {
	topic string // broker topic
	data  []byte
}

func (fx *effects) mailbox(sessionID string, m *Message) {
	fx.items = append(fx.items, effect{mailboxTopic(sessionID), encodeRecord(m, "")})
}

// mailboxed reports whether the effects hold a record for the session's
// mailbox.
func (fx *effects) mailboxed(sessionID string) bool {
	mb := mailboxTopic(sessionID)
	for _, e := range fx.items {
		if e.topic == mb {
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
	fx.items = append(fx.items, effect{channelTopic(topic), encodeRecord(m, from)})
}

// flush publishes the effects in order, one broker call per run of records
// bound for the same topic.
func (fx *effects) flush(ctx context.Context, g *Gateway) error {
	items := fx.items
	fx.items = nil
	for len(items) > 0 {
		n := 1
		for n < len(items) && items[n].topic == items[0].topic {
			n++
		}
		data := make([][]byte, n)
		for i := range n {
			data[i] = items[i].data
		}
		if _, err := g.cfg.Broker.Publish(ctx, items[0].topic, data...); err != nil {
			return fmt.Errorf("publish to %s: %w", items[0].topic, err)
		}
		items = items[n:]
	}
	return nil
}
