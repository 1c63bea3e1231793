package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"mime"
	"strings"
	"testing"
)

// Fuzz targets for what clients send: request bodies, frames and session
// tokens. Their seed corpora are in testdata/fuzz/<target>/; .ci/run fuzzes
// each for a few seconds. Every input must be answered by a value or an
// error, never a panic, and what is accepted must mean what it says.

// FuzzSplitFrames cuts arbitrary bodies as the transports do.
func FuzzSplitFrames(f *testing.F) {
	f.Add("application/x-ndjson", []byte("[\"1\",\"1\",\"sala:lobby\",\"phx_join\",{}]\n[null,\"2\",\"phoenix\",\"heartbeat\",{}]\n"), false)
	f.Add("application/json", []byte(`[["1","1","sala:lobby","phx_join",{}],["1","2","sala:lobby","ping",{}]]`), true)
	f.Add("text/plain;charset=UTF-8", []byte(`{"topic":"sala:lobby","event":"phx_join","payload":{},"ref":"1"}`), true)
	f.Fuzz(func(t *testing.T, contentType string, body []byte, jsonList bool) {
		frames, err := SplitFrames(contentType, body, jsonList)
		if err != nil {
			if frames != nil {
				t.Fatalf("error %v with frames %q", err, frames)
			}
			return
		}
		if len(frames) == 0 {
			t.Fatal("no error and no frames")
		}
		mediaType, _, _ := mime.ParseMediaType(contentType)
		switch {
		case mediaType == "application/x-ndjson":
			for i, fr := range frames {
				if len(fr) == 0 || fr[0] != '[' && fr[0] != '{' || bytes.ContainsRune(fr, '\n') {
					t.Fatalf("ndjson frame %d is not one JSON line: %q", i, fr)
				}
			}
			if lines := bytes.Count(body, []byte("\n")) + 1; len(frames) > lines {
				t.Fatalf("%d frames from %d lines", len(frames), lines)
			}
		case len(frames) == 1 && bytes.Equal(frames[0], bytes.TrimSpace(body)):
			// One frame: the body itself.
		case jsonList:
			for i, fr := range frames {
				if !json.Valid(fr) {
					t.Fatalf("list element %d is not JSON: %q", i, fr)
				}
			}
		default:
			t.Fatalf("a body that is not ndjson or a JSON list became %d frames: %q", len(frames), frames)
		}
	})
}

// FuzzV2Decode decodes arbitrary frames with phoenix.js's serializer: a
// frame is refused with a FrameError, or it means the message whose
// encoding decodes to the same message (and encodes to the same bytes).
func FuzzV2Decode(f *testing.F) {
	f.Add([]byte(`["1","1","sala:lobby","phx_join",{}]`))
	f.Add([]byte(`[null,"5","phoenix","heartbeat",{}]`))
	f.Add([]byte(`["3","4","sala:lobby","nuevo_mensaje",{"contenido":"hola ñandú"}]`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		roundTrip(t, V2{}, frame, true)
	})
}

// FuzzV1Decode is FuzzV2Decode for the 1.0.0 serializer, whose encoding
// carries no join_ref (the server never sends one).
func FuzzV1Decode(f *testing.F) {
	f.Add([]byte(`{"topic":"sala:lobby","event":"phx_join","payload":{},"ref":"1"}`))
	f.Add([]byte(`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null,"join_ref":"2"}`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		roundTrip(t, V1{}, frame, false)
	})
}

// roundTrip checks ser's Decode of frame (see FuzzV2Decode).
func roundTrip(t *testing.T, ser Serializer, frame []byte, withJoinRef bool) {
	m, err := ser.Decode(frame)
	if err != nil {
		var fe *FrameError
		if m != nil || !errors.As(err, &fe) {
			t.Fatalf("refusal %v (%T) with message %+v: want a *FrameError and no message", err, err, m)
		}
		return
	}
	if m.Topic == "" || m.Event == "" || !json.Valid(m.Payload) {
		t.Fatalf("accepted %q as topic %q, event %q, payload %q", frame, m.Topic, m.Event, m.Payload)
	}
	enc, err := ser.Encode(m)
	if err != nil {
		t.Fatalf("encode %+v: %v", m, err)
	}
	m2, err := ser.Decode(enc)
	if err != nil {
		t.Fatalf("decode(encode(decode(%q))) = %v (encoded %q)", frame, err, enc)
	}
	if !withJoinRef {
		m.JoinRef = nil
	}
	if !sameRef(m.JoinRef, m2.JoinRef) || !sameRef(m.Ref, m2.Ref) || m.Topic != m2.Topic || m.Event != m2.Event || !bytes.Equal(m.Payload, m2.Payload) {
		t.Fatalf("round trip of %q changed the message:\n%+v\n%+v", frame, m, m2)
	}
	if enc2, _ := ser.Encode(m2); !bytes.Equal(enc, enc2) {
		t.Fatalf("encoding is not stable: %q then %q", enc, enc2)
	}
}

// FuzzParseSessionToken parses arbitrary session tokens (LongPoll's token
// with its session key, SSE's event ids without): a token is refused, or it
// names a well-formed session, key and cursor that encode to a token that
// parses to the same.
func FuzzParseSessionToken(f *testing.F) {
	f.Add("0123456789abcdef0123456789abcdef.1795700814136037")
	f.Add("0123456789abcdef0123456789abcdef.1795700814136042.0-1795700814291282.3-17")
	f.Add("0123456789abcdef0123456789abcdef" + "fedcba9876543210fedcba9876543210" + ".1795700814136042.0-1795700814291282")
	f.Fuzz(func(t *testing.T, s string) {
		tok, ok := ParseSessionToken(s)
		if !ok {
			if tok.SessionID != "" || tok.Key != "" || tok.Cursor.Slots != nil {
				t.Fatalf("refused %q but returned %+v", s, tok)
			}
			return
		}
		if !validSessionID(tok.SessionID) || len(tok.Cursor.Slots) > maxChannelsHardLimit {
			t.Fatalf("accepted %q as %+v", s, tok)
		}
		for slot := range tok.Cursor.Slots {
			if slot < 0 {
				t.Fatalf("accepted %q with slot %d", s, slot)
			}
		}
		enc := tok.String()
		again, ok := ParseSessionToken(enc)
		if !ok || again.SessionID != tok.SessionID || again.Key != tok.Key || again.Cursor.Mailbox != tok.Cursor.Mailbox || !maps.Equal(again.Cursor.Slots, tok.Cursor.Slots) {
			t.Fatalf("%q parsed as %+v, which encodes to %q, which parses as %+v (%v)", s, tok, enc, again, ok)
		}
		if again.String() != enc {
			t.Fatalf("encoding is not stable: %q then %q", enc, again.String())
		}
		if strings.ContainsAny(enc, " \r\n") {
			t.Fatalf("token %q would break an SSE id line or a header", enc)
		}
	})
}
