package token

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"hash"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// Vectors produced by Plug.Crypto 2.1.1 (Phoenix.Token.sign with a fixed
// signed_at), and checked independently in Python.
const (
	secret  = "abcdefghabcdefghabcdefghabcdefghabcdefghabcdefghabcdefghabcdefgh"
	salt    = "user auth"
	keyHex  = "2accee82cd986fd3c15e55abf3db03db01e891a4bb9469389a7584fdda020199"
	vector1 = "SFMyNTY.g2gDYQFuBgAAaOXPiwFiAAFRgA.diBgyKSmNpVMWDnPJFIm6gU1GNeFN7vZbnSzVobkIDQ"
	vector2 = "SFMyNTY.g2gDbQAAAAI0Mm4GAABo5c-LAWIAEnUA.5Pg5qIFOnXzdSYPOQ5OWV2kWfLzDOvHjeifxsCIdjzM"
)

var (
	signedAt = time.Unix(1_700_000_000, 0)
	later    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // well past both vectors' max age
	signer   = NewSigner(secret, salt)
)

// signRaw signs an arbitrary plaintext under header, for tokens Sign cannot make.
func signRaw(s *Signer, header string, plain []byte) string {
	h := map[string]func() hash.Hash{headerHS256: sha256.New, headerHS384: sha512.New384, headerHS512: sha512.New}[header]
	msg := header + "." + b64.EncodeToString(plain)
	return msg + "." + b64.EncodeToString(s.mac(h, msg))
}

// etf encodes terms with the version byte, failing the test on error.
func etf(t testing.TB, v any) []byte {
	t.Helper()
	b, err := appendTerm([]byte{etfVersion}, v, 0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestDerivedKey(t *testing.T) {
	if got := hex.EncodeToString(signer.key); got != keyHex {
		t.Fatalf("key = %s, want %s", got, keyHex)
	}
}

func TestVectors(t *testing.T) {
	tests := []struct {
		data   any
		maxAge time.Duration
		token  string
		want   any
	}{
		{1, 0, vector1, int64(1)},
		{"42", 1_209_600 * time.Second, vector2, "42"},
	}
	for _, tt := range tests {
		got, err := signer.Sign(tt.data, signedAt, tt.maxAge)
		if err != nil || got != tt.token {
			t.Errorf("Sign(%v) = %q, %v; want %q", tt.data, got, err, tt.token)
		}
		data, err := signer.Verify(tt.token, 10*365*24*time.Hour, later)
		if err != nil || data != tt.want {
			t.Errorf("Verify(%q, 10y) = %#v, %v; want %#v", tt.token, data, err, tt.want)
		}
		if data, err := signer.Verify(tt.token, 0, signedAt.Add(time.Hour)); err != nil || data != tt.want {
			t.Errorf("Verify(%q) an hour after signing = %#v, %v", tt.token, data, err)
		}
		if _, err := signer.Verify(tt.token, 0, later); !errors.Is(err, ErrExpired) {
			t.Errorf("Verify(%q) with embedded max age at %v: err = %v, want ErrExpired", tt.token, later, err)
		}
		if _, err := NewSigner(secret, "other salt").Verify(tt.token, 0, signedAt); !errors.Is(err, ErrInvalid) {
			t.Errorf("Verify(%q) with another salt: err = %v, want ErrInvalid", tt.token, err)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want any
	}{
		{"small int", 7, int64(7)},
		{"int32", int32(-70000), int64(-70000)},
		{"big int", int64(1) << 40, int64(1) << 40},
		{"min int64", int64(math.MinInt64), int64(math.MinInt64)},
		{"max int64", uint64(math.MaxInt64), int64(math.MaxInt64)},
		{"string", "héllo", "héllo"},
		{"empty string", "", ""},
		{"map", map[string]any{"id": 42, "nombre": "Ana"}, map[string]any{"id": int64(42), "nombre": "Ana"}},
		{"string map", map[string]string{"b": "2", "a": "1"}, map[string]any{"a": "1", "b": "2"}},
		{"nil", nil, nil},
		{"bool", true, true},
		{"atom", Atom("ok"), Atom("ok")},
		{"float", 1.5, 1.5},
		{"empty list", []any{}, []any{}},
		{"nested", []any{Tuple{Atom("v1"), "x", []string{"a"}}, false}, []any{Tuple{Atom("v1"), "x", []any{"a"}}, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := signer.Sign(tt.in, signedAt, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			got, err := signer.Verify(tok, 0, signedAt.Add(time.Minute))
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Verify = %#v, %v; want %#v", got, err, tt.want)
			}
		})
	}
}

// TestEncoding pins term_to_binary's exact bytes for each encoder branch.
func TestEncoding(t *testing.T) {
	tests := []struct {
		in   any
		want string
	}{
		{255, "83 61 ff"},
		{256, "83 62 00 00 01 00"},
		{-1, "83 62 ff ff ff ff"},
		{int64(1) << 31, "83 6e 04 00 00 00 00 80"},
		{-(int64(1) << 31) - 1, "83 6e 04 01 01 00 00 80"},
		{uint64(math.MaxUint64), "83 6e 08 00 ff ff ff ff ff ff ff ff"},
		{Atom("ok"), "83 77 02 6f 6b"},
		{nil, "83 77 03 6e 69 6c"},
		{"ab", "83 6d 00 00 00 02 61 62"},
		{[]any{1}, "83 6c 00 00 00 01 61 01 6a"},
		{Tuple{}, "83 68 00"},
		{1.0, "83 46 3f f0 00 00 00 00 00 00"},
		// Keys in byte order ("a" < "b" < "ba"), whatever Go's map order.
		{map[string]any{"ba": 3, "b": 2, "a": 1}, "83 74 00 00 00 03 6d 00 00 00 01 61 61 01 6d 00 00 00 01 62 61 02 6d 00 00 00 02 62 61 61 03"},
	}
	for _, tt := range tests {
		if got := hex.EncodeToString(etf(t, tt.in)); got != strings.ReplaceAll(tt.want, " ", "") {
			t.Errorf("encode(%#v) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestExpiry(t *testing.T) {
	tok, err := signer.Sign("x", signedAt, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		maxAge time.Duration
		now    time.Time
		want   error
	}{
		{"at embedded deadline", 0, signedAt.Add(time.Hour), nil},
		{"1ms past embedded deadline", 0, signedAt.Add(time.Hour + time.Millisecond), ErrExpired},
		{"shorter override", time.Minute, signedAt.Add(2 * time.Minute), ErrExpired},
		{"longer override", 2 * time.Hour, signedAt.Add(90 * time.Minute), nil},
		{"negative override", -time.Second, signedAt, ErrExpired},
		{"future within skew", 0, signedAt.Add(-30 * time.Second), nil},
		{"future beyond skew", 0, signedAt.Add(-2 * time.Minute), ErrInvalid},
	}
	for _, tt := range tests {
		_, err := signer.Verify(tok, tt.maxAge, tt.now)
		if !errors.Is(err, tt.want) { // errors.Is(err, nil) reports err == nil
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestVerifyAtMost: the smaller of the embedded max age and the verifier's
// applies, where Verify lets the verifier's replace the embedded one.
func TestVerifyAtMost(t *testing.T) {
	hour, err := signer.Sign("x", signedAt, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	infinite := signRaw(signer, headerHS256, etf(t, Tuple{"x", signedAt.UnixMilli(), Atom("infinity")}))
	tests := []struct {
		name   string
		tok    string
		maxAge time.Duration
		now    time.Time
		want   error
	}{
		{"embedded shorter: valid before it", hour, 24 * time.Hour, signedAt.Add(time.Hour), nil},
		{"embedded shorter: expired after it", hour, 24 * time.Hour, signedAt.Add(time.Hour + time.Millisecond), ErrExpired},
		{"verifier shorter: valid before it", hour, time.Minute, signedAt.Add(time.Minute), nil},
		{"verifier shorter: expired after it", hour, time.Minute, signedAt.Add(2 * time.Minute), ErrExpired},
		{"infinity is capped", infinite, time.Minute, signedAt.Add(2 * time.Minute), ErrExpired},
		{"no cap given", hour, 0, signedAt, nil},
	}
	for _, tt := range tests {
		_, err := signer.VerifyAtMost(tt.tok, tt.maxAge, tt.now)
		if tt.maxAge <= 0 {
			if err == nil {
				t.Errorf("%s: VerifyAtMost with max age %v accepted the token", tt.name, tt.maxAge)
			}
			continue
		}
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
	// Verify keeps Phoenix's reading: the verifier's max age replaces the
	// embedded one.
	if _, err := signer.Verify(hour, 24*time.Hour, signedAt.Add(2*time.Hour)); err != nil {
		t.Errorf("Verify with a longer override: %v", err)
	}
}

func TestLegacyAndEmbeddedForms(t *testing.T) {
	ms := signedAt.UnixMilli()
	// %{data: "d", signed: ms} with atom keys, as old Phoenix wrote it.
	legacyMap := append(unhex("83 74 00 00 00 02 77 04"), "data"...)
	legacyMap = append(legacyMap, unhex("6d 00 00 00 01 64 77 06")...)
	legacyMap = append(legacyMap, "signed"...)
	legacyMap, _ = appendTerm(legacyMap, ms, 0)

	tests := []struct {
		name  string
		plain []byte
		now   time.Time
		want  error
	}{
		{"2-tuple fresh", etf(t, Tuple{"d", ms}), signedAt.Add(23 * time.Hour), nil},
		{"2-tuple after a day", etf(t, Tuple{"d", ms}), signedAt.Add(25 * time.Hour), ErrExpired},
		{"map fresh", legacyMap, signedAt.Add(23 * time.Hour), nil},
		{"map after a day", legacyMap, signedAt.Add(25 * time.Hour), ErrExpired},
		{"infinity", etf(t, Tuple{"d", ms, Atom("infinity")}), later, nil},
		{"float age", etf(t, Tuple{"d", ms, 1.5}), signedAt.Add(1500 * time.Millisecond), nil},
		{"float age expired", etf(t, Tuple{"d", ms, 1.5}), signedAt.Add(1501 * time.Millisecond), ErrExpired},
		{"zero age", etf(t, Tuple{"d", ms, 0}), signedAt, ErrExpired},
		{"huge age", etf(t, Tuple{"d", ms, int64(math.MaxInt64)}), later, nil},
		{"bad age", etf(t, Tuple{"d", ms, "soon"}), signedAt, ErrInvalid},
		{"signed not int", etf(t, Tuple{"d", "yesterday", 10}), signedAt, ErrInvalid},
		{"4-tuple", etf(t, Tuple{"d", ms, 10, 1}), signedAt, ErrInvalid},
		{"bare binary", etf(t, "d"), signedAt, ErrInvalid},
		{"map without signed", etf(t, map[string]any{"data": "d"}), signedAt, ErrInvalid},
	}
	for _, tt := range tests {
		data, err := signer.Verify(signRaw(signer, headerHS256, tt.plain), 0, tt.now)
		if tt.want == nil && (err != nil || data != "d") || !errors.Is(err, tt.want) {
			t.Errorf("%s: Verify = %#v, %v; want error %v", tt.name, data, err, tt.want)
		}
	}
}

func TestHeaders(t *testing.T) {
	plain := etf(t, Tuple{"d", signedAt.UnixMilli(), 60})
	for _, h := range []string{headerHS256, headerHS384, headerHS512} {
		if data, err := signer.Verify(signRaw(signer, h, plain), 0, signedAt); err != nil || data != "d" {
			t.Errorf("header %s: Verify = %#v, %v", h, data, err)
		}
	}
	// An HS256 signature relabelled as HS384 must fail.
	tok := strings.Replace(signRaw(signer, headerHS256, plain), headerHS256, headerHS384, 1)
	if _, err := signer.Verify(tok, 0, signedAt); !errors.Is(err, ErrInvalid) {
		t.Errorf("relabelled header: err = %v, want ErrInvalid", err)
	}
}

func TestMalformed(t *testing.T) {
	parts := strings.Split(vector1, ".")
	flip := func(s string, i int) string { // change one base64 character
		c := byte('A')
		if s[i] == 'A' {
			c = 'B'
		}
		return s[:i] + string(c) + s[i+1:]
	}
	now := signedAt.Add(time.Minute)
	tests := []struct {
		name string
		tok  string
		want error
	}{
		{"empty", "", ErrMissing},
		{"tampered signature", parts[0] + "." + parts[1] + "." + flip(parts[2], 5), ErrInvalid},
		{"tampered payload", parts[0] + "." + flip(parts[1], 5) + "." + parts[2], ErrInvalid},
		{"unknown header", "SFMyNTZ." + parts[1] + "." + parts[2], ErrInvalid},
		{"lowercase header", strings.ToLower(parts[0]) + "." + parts[1] + "." + parts[2], ErrInvalid},
		{"two parts", parts[0] + "." + parts[1], ErrInvalid},
		{"four parts", vector1 + ".x", ErrInvalid},
		{"one part", "garbage", ErrInvalid},
		{"bad base64 payload", parts[0] + ".!!!." + parts[2], ErrInvalid},
		{"bad base64 signature", parts[0] + "." + parts[1] + ".a+b/", ErrInvalid},
		{"padded signature", vector1 + "=", ErrInvalid},
		{"non-canonical base64", parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-1] + "R", ErrInvalid},
	}
	for _, tt := range tests {
		if _, err := signer.Verify(tt.tok, 0, now); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestBadETF signs hostile payloads correctly, so only the decoder stands between them and the caller.
func TestBadETF(t *testing.T) {
	good := unhex("83 68 03 61 01 6e 06 00 00 68 e5 cf 8b 01 62 00 01 51 80")
	deep := []byte{etfVersion}
	for range maxDepth + 2 {
		deep = append(deep, tagSmallTuple, 1)
	}
	deep = append(deep, tagSmallInt, 1)
	tests := map[string][]byte{
		"empty":               {},
		"no version":          good[1:],
		"trailing byte":       append(append([]byte{}, good...), 0),
		"compressed":          unhex("83 50 00 00 00 10 78 9c"),
		"pid":                 unhex("83 58 77 03 61 40 62 00 00 00 01 00 00 00 00 00 00 00 00"),
		"old float":           unhex("83 63 31"),
		"huge binary length":  unhex("83 6d ff ff ff ff 00"),
		"huge list length":    unhex("83 6c ff ff ff ff 6a"),
		"huge map length":     unhex("83 74 7f ff ff ff 61 01"),
		"huge bignum length":  unhex("83 6f ff ff ff ff 00 01"),
		"bignum overflow":     unhex("83 6e 08 00 00 00 00 00 00 00 00 80"),
		"bignum 9 bytes":      unhex("83 6e 09 00 00 00 00 00 00 00 00 00 01"),
		"bignum bad sign":     unhex("83 6e 01 02 01"),
		"improper list":       unhex("83 6c 00 00 00 01 61 01 61 02"),
		"map integer key":     unhex("83 74 00 00 00 01 61 01 61 02"),
		"map duplicate key":   unhex("83 74 00 00 00 02 6d 00 00 00 01 61 61 01 77 01 61 61 02"),
		"atom bad utf8":       unhex("83 77 01 ff"),
		"NaN":                 unhex("83 46 7f f8 00 00 00 00 00 00"),
		"too deep":            deep,
		"truncated in tuple":  unhex("83 68 03 61 01"),
		"truncated in binary": unhex("83 6d 00 00 00 05 61 62"),
	}
	for i := 1; i < len(good); i++ {
		tests["truncated vector at "+string(rune('A'+i))] = good[:i]
	}
	for name, plain := range tests {
		if _, err := decodeTerm(plain); err == nil {
			t.Errorf("%s: decodeTerm succeeded", name)
		}
		if _, err := signer.Verify(signRaw(signer, headerHS256, plain), 0, signedAt); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestDecodeForms(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want any
	}{
		{"latin-1 atom", "83 64 00 02 e9 74", Atom("ét")},
		{"small latin-1 atom", "83 73 02 6f 6b", Atom("ok")},
		{"utf8 atom true", "83 76 00 04 74 72 75 65", true},
		{"string ext", "83 6b 00 02 01 ff", []any{int64(1), int64(255)}},
		{"large tuple", "83 69 00 00 00 01 6a", Tuple{[]any{}}},
		{"large big", "83 6f 00 00 00 02 01 00 01", int64(-256)},
		{"big min int64", "83 6e 08 01 00 00 00 00 00 00 00 80", int64(math.MinInt64)},
		{"atom map keys", "83 74 00 00 00 02 77 01 61 61 01 77 03 6e 69 6c 61 02", map[string]any{"a": int64(1), "nil": int64(2)}},
	}
	for _, tt := range tests {
		got, err := decodeTerm(unhex(tt.in))
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: decodeTerm = %#v, %v; want %#v", tt.name, got, err, tt.want)
		}
	}
}

func TestSignErrors(t *testing.T) {
	cyclic := []any{nil}
	cyclic[0] = cyclic
	for name, data := range map[string]any{
		"channel":   make(chan int),
		"struct":    struct{}{},
		"int map":   map[int]any{1: 1},
		"cyclic":    cyclic,
		"NaN":       math.NaN(),
		"long atom": Atom(strings.Repeat("a", 256)),
	} {
		if _, err := signer.Sign(data, signedAt, 0); err == nil {
			t.Errorf("Sign(%s) succeeded", name)
		}
	}
	if _, err := signer.Sign(1, signedAt, time.Millisecond); err == nil {
		t.Error("Sign with sub-second max age succeeded")
	}
	short := NewSigner("too short", salt)
	if _, err := short.Sign(1, signedAt, 0); err == nil {
		t.Error("Sign with short secret succeeded")
	}
	if _, err := short.Verify(vector1, 0, signedAt); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("Verify with short secret: err = %v, want a configuration error", err)
	}
}

func TestConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			tok, err := signer.Sign(i, signedAt, time.Hour)
			if err != nil {
				t.Error(err)
				return
			}
			if got, err := signer.Verify(tok, 0, signedAt); err != nil || got != int64(i) {
				t.Errorf("Verify = %v, %v; want %d", got, err, i)
			}
		})
	}
	wg.Wait()
}

// FuzzVerify checks that Verify never panics, accepts only tokens signed
// with its key, each in its one spelling (strict base64), and refuses
// everything else with one of its three errors and no data. Its seed corpus
// is in testdata/fuzz/FuzzVerify/.
func FuzzVerify(f *testing.F) {
	for _, s := range []string{vector1, vector2,
		signRaw(signer, headerHS512, etf(f, Tuple{map[string]any{"id": 1}, signedAt.UnixMilli(), 60}))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		data, err := signer.Verify(tok, 0, signedAt)
		if err == nil && !genuine(tok) {
			t.Fatalf("accepted forged token %q: %#v", tok, data)
		}
		requireVerifyResult(t, tok, data, err)
		data, err = signer.Verify(tok, 0, later)
		if err == nil {
			t.Fatalf("accepted %q long past its age: %#v", tok, data)
		}
		requireVerifyResult(t, tok, data, err)
	})
}

// genuine reports whether tok is what signer itself makes of its header
// and payload.
func genuine(tok string) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return false
	}
	plain, err := b64.DecodeString(parts[1])
	switch parts[0] {
	case headerHS256, headerHS384, headerHS512:
		return err == nil && tok == signRaw(signer, parts[0], plain)
	}
	return false
}

// FuzzVerifySigned signs arbitrary plaintexts, which FuzzVerify cannot get
// past the signature check, and verifies them at several times: whatever
// the payload holds (any term, any signed_at, any max age), Verify returns
// data or one of its errors, and never accepts a token signed after now
// plus the allowed skew.
func FuzzVerifySigned(f *testing.F) {
	f.Add(etf(f, Tuple{int64(42), signedAt.UnixMilli(), int64(86400)}), int64(0), int64(0))
	f.Add(etf(f, Tuple{map[string]any{"id": int64(42), "nombre": "Ana"}, signedAt.UnixMilli(), 1.5}), int64(1000), int64(0))
	f.Add(etf(f, Tuple{"x", signedAt.UnixMilli()}), int64(-5000), int64(-1))
	f.Add(etf(f, map[string]any{"data": "x", "signed": signedAt.UnixMilli()}), int64(math.MaxInt64), int64(3600))
	f.Add(etf(f, Tuple{nil, int64(math.MinInt64), Atom("infinity")}), int64(math.MinInt64), int64(0))
	f.Fuzz(func(t *testing.T, plain []byte, offsetMs, maxAgeS int64) {
		now := signedAt.Add(time.Duration(offsetMs) * time.Millisecond)
		maxAge := time.Duration(maxAgeS) * time.Second
		if maxAgeS > math.MaxInt64/int64(time.Second) || maxAgeS < math.MinInt64/int64(time.Second) {
			maxAge = time.Duration(maxAgeS) // keep it from overflowing
		}
		for _, h := range []string{headerHS256, headerHS512} {
			tok := signRaw(signer, h, plain)
			data, err := signer.Verify(tok, maxAge, now)
			requireVerifyResult(t, tok, data, err)
			if err != nil {
				continue
			}
			term, derr := decodeTerm(plain)
			_, signedMs, _, uerr := unwrap(term)
			if derr != nil || uerr != nil {
				t.Fatalf("accepted %x, whose payload is not a token's: %v %v", plain, derr, uerr)
			}
			// The difference is positive: as a uint64 it does not overflow.
			if nowMs := now.UnixMilli(); signedMs > nowMs && uint64(signedMs-nowMs) > uint64(maxClockSkew.Milliseconds()) {
				t.Fatalf("accepted a token signed %d ms after now", uint64(signedMs-nowMs))
			}
		}
	})
}

// requireVerifyResult checks one Verify result: data, or no data and an
// error that is one of ErrMissing, ErrInvalid and ErrExpired.
func requireVerifyResult(t *testing.T, tok string, data any, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if data != nil {
		t.Fatalf("refused %q (%v) but returned data %#v", tok, err, data)
	}
	if !errors.Is(err, ErrMissing) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrExpired) {
		t.Fatalf("refused %q with %v (%T), which is none of ErrMissing, ErrInvalid, ErrExpired", tok, err, err)
	}
}

// FuzzDecode drives the ETF decoder directly, which FuzzVerify cannot reach
// past the signature check: it must never panic, and whatever it accepts must
// re-encode and decode to the same value.
func FuzzDecode(f *testing.F) {
	f.Add(unhex("83 68 03 61 01 6e 06 00 00 68 e5 cf 8b 01 62 00 01 51 80"))
	f.Add(etf(f, []any{Tuple{Atom("a"), 1.5, nil}, map[string]any{"k": "v"}, int64(-1) << 40}))
	f.Add(unhex("83 6b 00 02 01 ff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decodeTerm(b)
		if err != nil {
			return
		}
		re, err := appendTerm([]byte{etfVersion}, v, 0)
		if err != nil {
			t.Fatalf("re-encoding %#v: %v", v, err)
		}
		v2, err := decodeTerm(re)
		if err != nil || !reflect.DeepEqual(v, v2) {
			t.Fatalf("round trip %#v -> %#v, %v", v, v2, err)
		}
	})
}
