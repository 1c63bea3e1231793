package loadgen

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestParseFrame(t *testing.T) {
	f, err := parseFrame([]byte(` [null, "5", "bench:0" ,"bench", {"p":1,"s":2,"t":3,"pad":"x\"y"}, "extra"] `))
	if err != nil {
		t.Fatalf("parseFrame: %v", err)
	}
	if f.joinRef != nil || string(f.ref) != "5" || string(f.topic) != "bench:0" || string(f.event) != "bench" {
		t.Errorf("got join_ref %q ref %q topic %q event %q", f.joinRef, f.ref, f.topic, f.event)
	}
	if string(f.payload) != `{"p":1,"s":2,"t":3,"pad":"x\"y"}` {
		t.Errorf("payload %s", f.payload)
	}
	for _, bad := range []string{
		``, `{}`, `[]`, `[null,null,"t","e"]`, `[null,null,"t","e",[]]`, `[null,null,null,"e",{}]`,
		`[null,null,"t","e",{}`, `[null,null,"t","e",{"a":}]`, `[null,null,"t","e",{}] x`,
		`[1,null,"t","e",{}]`, `[null,null,"t","e",{"a":"` + "\x01" + `"}]`, `[null,null,"t\","e",{}]`,
	} {
		if _, err := parseFrame([]byte(bad)); !errors.Is(err, errBadJSON) {
			t.Errorf("parseFrame(%q) = %v, want a malformed-JSON error", bad, err)
		}
	}
}

// TestParseFrameNeverPanics mutates valid frames at random: whatever the
// bytes, the scanner answers with a frame or an error.
func TestParseFrameNeverPanics(t *testing.T) {
	seeds := []string{
		`["1","2","bench:0","bench",{"p":1,"s":2,"t":3,"pad":"xx","n":[1,{"a":[true,false,null]}]}]`,
		`[null,null,"sala:x","mensaje_recibido",{"id":1,"contenido":"bench p=1 s=2 t=3","autor":"A \u00e9"}]`,
	}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte(`[]{}",:\ 0-9.etrufalsn`)
	for range 20000 {
		b := []byte(seeds[r.IntN(len(seeds))])
		for range 1 + r.IntN(4) {
			switch i := r.IntN(len(b)); r.IntN(3) {
			case 0:
				b[i] = alphabet[r.IntN(len(alphabet))]
			case 1:
				b = append(b[:i], b[i+1:]...)
			default:
				b = b[:i]
			}
			if len(b) == 0 {
				break
			}
		}
		f, err := parseFrame(b)
		if err == nil && !json.Valid(f.payload) {
			// The scanner is lenient about numbers; it must still have
			// returned a well-delimited payload.
			if f.payload[0] != '{' || f.payload[len(f.payload)-1] != '}' {
				t.Fatalf("parseFrame(%q) accepted a payload %q", b, f.payload)
			}
		}
		var vals [3][]byte
		_ = objectFields(b, benchKeys, vals[:])
		_, _ = parseEnvelope(b)
	}
}

func TestObjectFieldsAndUnescape(t *testing.T) {
	var vals [3][]byte
	if err := objectFields([]byte(`{"s":12,"x":{"p":9},"p":-3,"t":"a"}`), benchKeys, vals[:]); err != nil {
		t.Fatal(err)
	}
	if p, _ := parseInt(vals[0]); p != -3 {
		t.Errorf("p = %s", vals[0])
	}
	if s, _ := parseInt(vals[1]); s != 12 {
		t.Errorf("s = %s", vals[1])
	}
	if _, ok := parseInt(vals[2]); ok {
		t.Errorf("t = %s parsed as an integer", vals[2])
	}
	for _, bad := range []string{"", "-", "1.5", "99999999999999999999", "1e3"} {
		if _, ok := parseInt([]byte(bad)); ok {
			t.Errorf("parseInt(%q) ok", bad)
		}
	}

	var want string
	raw := `a\"b\\c\/\n\u00e9\ud83d\ude00`
	if err := json.Unmarshal([]byte(`"`+raw+`"`), &want); err != nil {
		t.Fatal(err)
	}
	got, err := appendUnescaped(nil, []byte(raw))
	if err != nil || string(got) != want {
		t.Errorf("appendUnescaped = %q, %v; want %q", got, err, want)
	}
	if _, err := appendUnescaped(nil, []byte(`\x`)); err == nil {
		t.Error(`appendUnescaped(\x) accepted`)
	}
}

func TestParseEnvelope(t *testing.T) {
	env, err := parseEnvelope([]byte(`{"messages":["[null,null,\"t\",\"e\",{}]"],"status":200,"token":"abc.1"}`))
	if err != nil || env.status != 200 || string(env.token) != "abc.1" {
		t.Fatalf("parseEnvelope = %+v, %v", env, err)
	}
	if _, err := parseEnvelope([]byte(`{"status":"200"}`)); err == nil {
		t.Error("a string status was accepted")
	}
	if _, err := parseEnvelope([]byte(`<html>502</html>`)); err == nil {
		t.Error("HTML was accepted")
	}
}
