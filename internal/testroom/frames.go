package testroom

import (
	"encoding/json"
	"reflect"
	"testing"
)

// Frame is a decoded V2 frame.
type Frame struct {
	JoinRef *string
	Ref     *string
	Topic   string
	Event   string
	Payload json.RawMessage
}

// DecodeV2 decodes a V2 frame or fails the test.
func DecodeV2(t *testing.T, s string) Frame {
	t.Helper()
	var parts []json.RawMessage
	if err := json.Unmarshal([]byte(s), &parts); err != nil || len(parts) != 5 {
		t.Fatalf("not a V2 frame (5-array): %q (%v)", s, err)
	}
	var f Frame
	for i, dst := range []any{&f.JoinRef, &f.Ref, &f.Topic, &f.Event} {
		if err := json.Unmarshal(parts[i], dst); err != nil {
			t.Fatalf("V2 frame %q element %d: %v", s, i, err)
		}
	}
	f.Payload = parts[4]
	return f
}

// JSONEqual reports whether a and b are the same JSON value, whatever the
// key order and spacing.
func JSONEqual(a, b string) bool {
	var va, vb any
	if json.Unmarshal([]byte(a), &va) != nil || json.Unmarshal([]byte(b), &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// RequireFrame fails the test unless got is the JSON value want.
func RequireFrame(t *testing.T, got, want string) {
	t.Helper()
	if !JSONEqual(got, want) {
		t.Fatalf("frame mismatch\n got: %s\nwant: %s", got, want)
	}
}
