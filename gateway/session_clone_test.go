package gateway

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// The memory store hands out clones instead of decoded copies: a clone must
// be equal to the session and share nothing mutable with it.
func TestSessionCloneIsDeep(t *testing.T) {
	ref := "3"
	s := &Session{
		ID: "abc", UserID: json.RawMessage(`42`), Name: "Ana", Vsn: "2.0.0",
		Channels: map[string]*ChannelState{"sala:lobby": {
			Topic: "sala:lobby", JoinRef: &ref, Slot: 1, Since: 99,
			Assigns: map[string]json.RawMessage{"meta": json.RawMessage(`{"estado":"activo"}`)},
		}},
		NextSlot: 2, RecentRefs: []string{"sala:lobby\x001"}, CreatedAt: time.Unix(1700000000, 0).UTC(),
		Outbox: []PendingRecord{{Topic: "m:abc", Data: json.RawMessage(`{"ts":1,"t":"sala:lobby","e":"phx_reply","p":{}}`)}},
	}
	// Every exported field is set, so that a field added later and
	// forgotten by clone shows up here.
	for _, v := range []any{*s, *s.Channels["sala:lobby"], s.Outbox[0]} {
		rv := reflect.ValueOf(v)
		for i := range rv.NumField() {
			if f := rv.Type().Field(i); f.IsExported() && rv.Field(i).IsZero() {
				t.Fatalf("test fixture: %s.%s is not set", rv.Type().Name(), f.Name)
			}
		}
	}
	c := s.clone()
	want, _ := json.Marshal(s)
	got, _ := json.Marshal(c)
	if string(got) != string(want) {
		t.Fatalf("clone differs:\n got %s\nwant %s", got, want)
	}
	// Change everything mutable in the clone: the original must not move.
	c.UserID[0] = '7'
	c.RecentRefs[0] = "x"
	c.Outbox[0].Data[2] = 'X'
	c.Outbox[0].Topic = "m:other"
	ch := c.Channels["sala:lobby"]
	*ch.JoinRef = "9"
	ch.Since = 1
	ch.Assigns["meta"][2] = 'X'
	ch.Assigns["new"] = json.RawMessage(`1`)
	c.Channels["otro"] = &ChannelState{}
	if after, _ := json.Marshal(s); string(after) != string(want) {
		t.Fatalf("changing the clone changed the original:\n now %s\nwas %s", after, want)
	}
}
