package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestSerializerFor(t *testing.T) {
	for vsn, want := range map[string]string{"": "1.0.0", "1.0.0": "1.0.0", "1.0.7": "1.0.0", "2.0.0": "2.0.0", "2.0.12": "2.0.0"} {
		s, err := SerializerFor(vsn)
		if err != nil || s.Vsn() != want {
			t.Errorf("SerializerFor(%q) = %v, %v; want %s", vsn, s, err, want)
		}
	}
	for _, vsn := range []string{"3.0.0", "123.1.1", "2.1.0", "2.0", "2.0.x", "v2.0.0", "1.0.", "2.0.-1"} {
		if _, err := SerializerFor(vsn); !errors.Is(err, ErrUnsupportedVsn) {
			t.Errorf("SerializerFor(%q) error = %v, want ErrUnsupportedVsn", vsn, err)
		}
	}
}

func TestV2RoundTrip(t *testing.T) {
	cases := []struct {
		frame string
		want  Message
		out   string
	}{
		{`["11","12","room:lobby","new_msg",{"body":"hi"}]`, Message{JoinRef: str("11"), Ref: str("12"), Topic: "room:lobby", Event: "new_msg", Payload: json.RawMessage(`{"body":"hi"}`)}, `["11","12","room:lobby","new_msg",{"body":"hi"}]`},
		{`[null,"3","phoenix","heartbeat",{}]`, Message{Ref: str("3"), Topic: "phoenix", Event: "heartbeat", Payload: json.RawMessage(`{}`)}, `[null,"3","phoenix","heartbeat",{}]`},
		{`[null, 7, "t", "e", {"a":1}, "extra"]`, Message{Ref: str("7"), Topic: "t", Event: "e", Payload: json.RawMessage(`{"a":1}`)}, `[null,"7","t","e",{"a":1}]`},
		{`[null,null,"sala:ñ","ev\"q",{}]`, Message{Topic: "sala:ñ", Event: `ev"q`, Payload: json.RawMessage(`{}`)}, `[null,null,"sala:ñ","ev\"q",{}]`},
	}
	for _, c := range cases {
		m, err := V2{}.Decode([]byte(c.frame))
		if err != nil {
			t.Fatalf("Decode(%s): %v", c.frame, err)
		}
		if !sameRef(m.JoinRef, c.want.JoinRef) || !sameRef(m.Ref, c.want.Ref) || m.Topic != c.want.Topic || m.Event != c.want.Event || string(m.Payload) != string(c.want.Payload) {
			t.Errorf("Decode(%s) = %+v, want %+v", c.frame, m, c.want)
		}
		out, _ := V2{}.Encode(m)
		if string(out) != c.out {
			t.Errorf("Encode = %s, want %s", out, c.out)
		}
	}
}

func TestV2DecodeRejects(t *testing.T) {
	for _, frame := range []string{
		``, `{}`, `"x"`, `[1,2,3,4]`, `[null,"1","t","e"]`, `[null,"1","","e",{}]`, `[null,"1","t","",{}]`,
		`[null,"1",5,"e",{}]`, `[null,"1","t",null,{}]`, `[{},"1","t","e",{}]`, `[null,["x"],"t","e",{}]`, `[null,"1","t","e",{}`, `nope`,
	} {
		if _, err := (V2{}).Decode([]byte(frame)); err == nil {
			t.Errorf("Decode(%q) accepted a malformed frame", frame)
		} else if fe := (*FrameError)(nil); !errors.As(err, &fe) {
			t.Errorf("Decode(%q) error %v is not a *FrameError", frame, err)
		}
	}
}

func TestV1(t *testing.T) {
	m, err := V1{}.Decode([]byte(`{"topic":"room:a","event":"phx_join","payload":{"x":1},"ref":"1","join_ref":"9"}`))
	if err != nil {
		t.Fatal(err)
	}
	if *m.Ref != "1" || *m.JoinRef != "9" || m.Topic != "room:a" || m.Event != "phx_join" || string(m.Payload) != `{"x":1}` {
		t.Fatalf("Decode = %+v", m)
	}
	m.Event = EventReply
	out, _ := V1{}.Encode(m)
	// The server never sends join_ref to a V1 client.
	if want := `{"topic":"room:a","event":"phx_reply","payload":{"x":1},"ref":"1"}`; string(out) != want {
		t.Errorf("Encode = %s, want %s", out, want)
	}
	out, _ = V1{}.Encode(&Message{Topic: "t", Event: "e"})
	if want := `{"topic":"t","event":"e","payload":{},"ref":null}`; string(out) != want {
		t.Errorf("Encode = %s, want %s", out, want)
	}
	for _, frame := range []string{`[]`, `{"topic":"t","event":"e","payload":{}}`, `{"topic":"t","event":"e","ref":null}`, `{"topic":"","event":"e","payload":{},"ref":null}`, `{`} {
		if _, err := (V1{}).Decode([]byte(frame)); err == nil {
			t.Errorf("Decode(%q) accepted a malformed frame", frame)
		}
	}
}

func TestSessionToken(t *testing.T) {
	tok := SessionToken{SessionID: newSessionID(), Cursor: Cursor{Mailbox: 17, Slots: map[int]uint64{3: 1795700814136042, 0: 5}}}
	s := tok.String()
	back, ok := ParseSessionToken(s)
	if !ok || back.SessionID != tok.SessionID || back.Cursor.Mailbox != 17 || back.Cursor.Slots[3] != 1795700814136042 || back.Cursor.Slots[0] != 5 || len(back.Cursor.Slots) != 2 {
		t.Fatalf("round trip of %q = %+v, %v", s, back, ok)
	}
	if s2 := back.String(); s2 != s {
		t.Errorf("token not deterministic: %q then %q", s, s2)
	}
	for _, bad := range []string{"", "abc", tok.SessionID, tok.SessionID + ".x", tok.SessionID + ".1.2", tok.SessionID + ".1.-1-2", "SFMyNTY.g2gDYQFuBgAAaOXPiwFiAAFRgA.diBgyKSm", "zz" + tok.SessionID[2:] + ".1"} {
		if _, ok := ParseSessionToken(bad); ok {
			t.Errorf("ParseSessionToken(%q) accepted", bad)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`["1","1","room:a","phx_join",{}]`))
	f.Add([]byte(`{"topic":"t","event":"e","payload":{},"ref":null}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		for _, s := range []Serializer{V1{}, V2{}} {
			m, err := s.Decode(frame)
			if err != nil {
				continue
			}
			out, err := s.Encode(m)
			if err != nil || !json.Valid(out) {
				t.Fatalf("%s: decoded %q but encoded invalid JSON %q (%v)", s.Vsn(), frame, out, err)
			}
		}
	})
}

// Refs, join_refs, topics and events are echoed, stored and logged: both
// serializers refuse them over MaxFieldBytes, naming the field and the limit.
func TestDecodeRefusesLongFields(t *testing.T) {
	ok := strings.Repeat("a", MaxFieldBytes)
	long := strings.Repeat("a", MaxFieldBytes+1)
	digits := strings.Repeat("7", MaxFieldBytes+1)
	v2 := func(jr, ref, topic, event string) string {
		return `[` + jr + `,` + ref + `,` + topic + `,` + event + `,{}]`
	}
	v1 := func(jr, ref, topic, event string) string {
		return `{"join_ref":` + jr + `,"ref":` + ref + `,"topic":` + topic + `,"event":` + event + `,"payload":{}}`
	}
	q := func(s string) string { return `"` + s + `"` }
	for _, ser := range []struct {
		s     Serializer
		frame func(jr, ref, topic, event string) string
	}{{V2{}, v2}, {V1{}, v1}} {
		if _, err := ser.s.Decode([]byte(ser.frame(q(ok), q(ok), q(ok), q(ok)))); err != nil {
			t.Errorf("%s: fields of exactly %d bytes refused: %v", ser.s.Vsn(), MaxFieldBytes, err)
		}
		for field, frame := range map[string]string{
			"join_ref": ser.frame(q(long), `"1"`, `"t"`, `"e"`),
			"ref":      ser.frame(`"1"`, q(long), `"t"`, `"e"`),
			"topic":    ser.frame(`"1"`, `"1"`, q(long), `"e"`),
			"event":    ser.frame(`"1"`, `"1"`, `"t"`, q(long)),
		} {
			_, err := ser.s.Decode([]byte(frame))
			want := fmt.Sprintf("%s is %d bytes, the limit is %d", field, MaxFieldBytes+1, MaxFieldBytes)
			if !errors.Is(err, ErrFieldTooLong) || !strings.Contains(fmt.Sprint(err), want) {
				t.Errorf("%s: a %d-byte %s: error %v, want ErrFieldTooLong saying %q", ser.s.Vsn(), MaxFieldBytes+1, field, err, want)
			}
		}
		// A numeric ref is kept as its text, which is what is bounded.
		if _, err := ser.s.Decode([]byte(ser.frame(`null`, digits, `"t"`, `"e"`))); !errors.Is(err, ErrFieldTooLong) {
			t.Errorf("%s: a %d-digit numeric ref: error %v, want ErrFieldTooLong", ser.s.Vsn(), len(digits), err)
		}
	}
}
