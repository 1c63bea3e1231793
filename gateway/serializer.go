package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Serializer turns Messages into frames and back. Phoenix negotiates it by the
// client's `vsn` query parameter.
type Serializer interface {
	// Vsn is the protocol version this serializer speaks, "1.0.0" or "2.0.0".
	Vsn() string
	// Encode renders m as one text frame.
	Encode(m *Message) ([]byte, error)
	// Decode parses one text frame sent by a client.
	Decode(frame []byte) (*Message, error)
}

// ErrUnsupportedVsn is returned by SerializerFor for a version no serializer speaks.
var ErrUnsupportedVsn = errors.New("unsupported protocol version")

// SerializerFor picks the serializer for a client's vsn, as Phoenix does:
// a missing vsn means 1.0.0; "~> 1.0.0" and "~> 2.0.0" match (any patch).
func SerializerFor(vsn string) (Serializer, error) {
	if vsn == "" {
		vsn = "1.0.0"
	}
	switch {
	case patchOf(vsn, "1.0."):
		return V1{}, nil
	case patchOf(vsn, "2.0."):
		return V2{}, nil
	}
	return nil, fmt.Errorf("%w %q: this server speaks 1.0.x and 2.0.x", ErrUnsupportedVsn, vsn)
}

// patchOf reports whether vsn is prefix followed by a patch number.
func patchOf(vsn, prefix string) bool {
	rest, ok := strings.CutPrefix(vsn, prefix)
	if !ok || rest == "" {
		return false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// FrameError describes a frame that could not be decoded.
type FrameError struct {
	Reason string
	// err is the sentinel the refusal is an instance of (ErrFieldTooLong),
	// if any, for errors.Is.
	err error
}

func (e *FrameError) Error() string { return "invalid frame: " + e.Reason }

// Unwrap returns the sentinel the refusal is an instance of, or nil.
func (e *FrameError) Unwrap() error { return e.err }

func frameErr(format string, args ...any) error {
	return &FrameError{Reason: fmt.Sprintf(format, args...)}
}

// MaxFieldBytes bounds a client frame's ref, join_ref, topic and event, in
// bytes: they are echoed into replies, kept in the session (refs for
// de-duplication, topics of joined channels) and logged, so a client must
// not choose their size. Phoenix's own clients send refs of a few digits and
// topics of a few dozen bytes. /api/broadcast has the same limit.
const MaxFieldBytes = 255

// ErrFieldTooLong is wrapped by the error of a frame whose ref, join_ref,
// topic or event is longer than MaxFieldBytes; Gateway.Handle refuses its
// batch whole with a *BatchError.
var ErrFieldTooLong = errors.New("field too long")

// checkFieldLen refuses a field longer than MaxFieldBytes.
func checkFieldLen(what, v string) error {
	if len(v) > MaxFieldBytes {
		return &FrameError{Reason: fmt.Sprintf("%s is %d bytes, the limit is %d", what, len(v), MaxFieldBytes), err: ErrFieldTooLong}
	}
	return nil
}

// V2 is Phoenix's "2.0.0" JSON serializer: frames are arrays
// [join_ref, ref, topic, event, payload]. phoenix.js speaks it.
type V2 struct{}

// Vsn implements Serializer.
func (V2) Vsn() string { return "2.0.0" }

// Encode implements Serializer.
func (V2) Encode(m *Message) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(m.Topic) + len(m.Event) + len(m.Payload) + 32)
	buf.WriteByte('[')
	writeNullable(&buf, m.JoinRef)
	buf.WriteByte(',')
	writeNullable(&buf, m.Ref)
	buf.WriteByte(',')
	writeJSONString(&buf, m.Topic)
	buf.WriteByte(',')
	writeJSONString(&buf, m.Event)
	buf.WriteByte(',')
	p := m.Payload
	if len(p) == 0 {
		p = emptyObject
	}
	buf.Write(p)
	buf.WriteByte(']')
	return buf.Bytes(), nil
}

// Decode implements Serializer. Like Phoenix it takes the first five elements
// of an array of at least five; unlike Phoenix a bad frame is an error for the
// caller to report, not a crash of the session.
func (V2) Decode(frame []byte) (*Message, error) {
	var parts []json.RawMessage
	if err := json.Unmarshal(frame, &parts); err != nil {
		return nil, frameErr("vsn 2.0.0 expects a JSON array [join_ref, ref, topic, event, payload]: %v", err)
	}
	if len(parts) < 5 {
		return nil, frameErr("vsn 2.0.0 expects 5 elements [join_ref, ref, topic, event, payload], got %d", len(parts))
	}
	m := &Message{}
	var err error
	if m.JoinRef, err = decodeRef(parts[0], "join_ref"); err != nil {
		return nil, err
	}
	if m.Ref, err = decodeRef(parts[1], "ref"); err != nil {
		return nil, err
	}
	if err := decodeName(parts[2], "topic", &m.Topic); err != nil {
		return nil, err
	}
	if err := decodeName(parts[3], "event", &m.Event); err != nil {
		return nil, err
	}
	m.Payload = parts[4]
	return m, nil
}

// V1 is Phoenix's "1.0.0" JSON serializer: frames are objects with topic,
// event, payload and ref; the server never sends join_ref.
type V1 struct{}

// Vsn implements Serializer.
func (V1) Vsn() string { return "1.0.0" }

// Encode implements Serializer.
func (V1) Encode(m *Message) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(m.Topic) + len(m.Event) + len(m.Payload) + 48)
	buf.WriteString(`{"topic":`)
	writeJSONString(&buf, m.Topic)
	buf.WriteString(`,"event":`)
	writeJSONString(&buf, m.Event)
	buf.WriteString(`,"payload":`)
	p := m.Payload
	if len(p) == 0 {
		p = emptyObject
	}
	buf.Write(p)
	buf.WriteString(`,"ref":`)
	writeNullable(&buf, m.Ref)
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// Decode implements Serializer. topic, event, payload and ref are required
// (ref may be null), join_ref is optional, as in Phoenix.
func (V1) Decode(frame []byte) (*Message, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(frame, &obj); err != nil {
		return nil, frameErr("vsn 1.0.0 expects a JSON object {topic, event, payload, ref}: %v", err)
	}
	for _, k := range []string{"topic", "event", "payload", "ref"} {
		if _, ok := obj[k]; !ok {
			return nil, frameErr("vsn 1.0.0 frame is missing %q", k)
		}
	}
	m := &Message{Payload: obj["payload"]}
	var err error
	if m.Ref, err = decodeRef(obj["ref"], "ref"); err != nil {
		return nil, err
	}
	if jr, ok := obj["join_ref"]; ok {
		if m.JoinRef, err = decodeRef(jr, "join_ref"); err != nil {
			return nil, err
		}
	}
	if err := decodeName(obj["topic"], "topic", &m.Topic); err != nil {
		return nil, err
	}
	if err := decodeName(obj["event"], "event", &m.Event); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeRef accepts a JSON string or null. Numbers are accepted too and kept
// as their text, since hand-written clients often send them.
func decodeRef(raw json.RawMessage, what string) (*string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, frameErr("%s must be a string or null", what)
		}
		s = n.String()
	}
	if err := checkFieldLen(what, s); err != nil {
		return nil, err
	}
	return &s, nil
}

func decodeName(raw json.RawMessage, what string, dst *string) error {
	if err := json.Unmarshal(raw, dst); err != nil || *dst == "" {
		return frameErr("%s must be a non-empty string", what)
	}
	return checkFieldLen(what, *dst)
}

func writeNullable(buf *bytes.Buffer, s *string) {
	if s == nil {
		buf.WriteString("null")
		return
	}
	writeJSONString(buf, *s)
}

func writeJSONString(buf *bytes.Buffer, s string) {
	if isPlainASCII(s) {
		buf.WriteByte('"')
		buf.WriteString(s)
		buf.WriteByte('"')
		return
	}
	b, _ := json.Marshal(s)
	buf.Write(b)
}

// isPlainASCII reports whether s can be written between quotes as is.
func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
