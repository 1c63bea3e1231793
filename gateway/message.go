// Package gateway is Sluice's channel core: the Phoenix Channels message
// model and serializers, socket connect and authentication, the channel
// lifecycle (join, leave, reply, heartbeat, close, error), the handler API,
// presence, and the session stores. It knows nothing of HTTP: transports turn
// requests into calls on a Gateway and its output into bytes.
//
// Nothing in it assumes one process. A session's state lives in a
// SessionStore, topic messages in a topics.Broker, presence in a
// PresenceStore, so that any instance can serve any request of any session.
package gateway

import (
	"bytes"
	"encoding/json"
)

// Reserved events of the Phoenix Channels protocol.
const (
	EventJoin      = "phx_join"
	EventLeave     = "phx_leave"
	EventReply     = "phx_reply"
	EventClose     = "phx_close"
	EventError     = "phx_error"
	EventHeartbeat = "heartbeat"
	TopicPhoenix   = "phoenix"

	EventPresenceState = "presence_state"
	EventPresenceDiff  = "presence_diff"
)

// Message is one Phoenix Channels frame, in either direction. Ref and JoinRef
// are opaque strings chosen by the client; nil stands for JSON null.
type Message struct {
	JoinRef *string         `json:"j,omitempty"`
	Ref     *string         `json:"r,omitempty"`
	Topic   string          `json:"t"`
	Event   string          `json:"e"`
	Payload json.RawMessage `json:"p"`
}

// str returns a pointer to s, for Ref and JoinRef.
func str(s string) *string { return &s }

// refString renders a nullable ref for logs and comparisons.
func refString(r *string) string {
	if r == nil {
		return "null"
	}
	return *r
}

// sameRef reports whether two nullable refs are equal.
func sameRef(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// replyPayload builds the payload of a phx_reply frame.
func replyPayload(status string, response json.RawMessage) json.RawMessage {
	if len(response) == 0 {
		response = emptyObject
	}
	b, _ := marshalJSON(struct {
		Response json.RawMessage `json:"response"`
		Status   string          `json:"status"`
	}{response, status})
	return b
}

var emptyObject = json.RawMessage(`{}`)

// marshalPayload encodes a handler's payload, which must be a JSON object as
// Phoenix requires of server-sent payloads. nil becomes {}.
func marshalPayload(v any) (json.RawMessage, error) {
	if v == nil {
		return emptyObject, nil
	}
	if raw, ok := v.(json.RawMessage); ok {
		if len(raw) == 0 {
			return emptyObject, nil
		}
		return raw, nil
	}
	return marshalJSON(v)
}

// marshalJSON is json.Marshal without its HTML escaping. What the gateway
// keeps and sends is JSON for its clients, never HTML (Phoenix does not
// escape it either), and escaping would keep each '<', '>' and '&' of a
// client's payload at six times its size in every broker log, mailbox and
// stored session it reaches.
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}
