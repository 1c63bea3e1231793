package gateway

import (
	"strings"
	"testing"
)

func TestSessionKeys(t *testing.T) {
	a := newSessionKeys([]byte("a shared secret of at least twenty bytes"))
	b := newSessionKeys([]byte("a shared secret of at least twenty bytes"))
	other := newSessionKeys([]byte("another secret of at least twenty bytes"))
	sid := newSessionID()
	key := a.key(sid)
	if len(key) != sessionKeyLen || !isLowerHex(key) {
		t.Fatalf("key %q: want %d lowercase hex characters", key, sessionKeyLen)
	}
	if !b.valid(sid, key) {
		t.Fatal("an instance with the same secret must accept the key")
	}
	if other.valid(sid, key) {
		t.Fatal("an instance with another secret must refuse the key")
	}
	if a.valid(newSessionID(), key) {
		t.Fatal("a key must be valid for its own session only")
	}
	for _, bad := range []string{"", key[:31], key + "0", strings.ToUpper(key), strings.Repeat("0", sessionKeyLen)} {
		if a.valid(sid, bad) {
			t.Fatalf("key %q accepted", bad)
		}
	}
}

func TestSessionTokenWithKey(t *testing.T) {
	sid, key := newSessionID(), strings.Repeat("ab", 16)
	tok := SessionToken{SessionID: sid, Key: key, Cursor: Cursor{Mailbox: 7, Slots: map[int]uint64{0: 3, 2: 9}}}
	s := tok.String()
	if want := sid + key + ".7.0-3.2-9"; s != want {
		t.Fatalf("String: want %s, got %s", want, s)
	}
	back, ok := ParseSessionToken(s)
	if !ok || back.SessionID != sid || back.Key != key || back.String() != s {
		t.Fatalf("ParseSessionToken(%q) = %+v, %v", s, back, ok)
	}
	public, ok := ParseSessionToken(sid + ".7")
	if !ok || public.Key != "" {
		t.Fatalf("a public token parses without a key: got %+v, %v", public, ok)
	}
	cred, ok := ParseSessionCredential(sid + key)
	if !ok || cred.SessionID != sid || cred.Key != key {
		t.Fatalf("ParseSessionCredential: got %+v, %v", cred, ok)
	}
	for _, bad := range []string{sid, sid + key + ".7", sid + strings.ToUpper(key), sid + key[:30], strings.ToUpper(sid) + key} {
		if _, ok := ParseSessionCredential(bad); ok {
			t.Errorf("ParseSessionCredential(%q) accepted", bad)
		}
	}
	if _, ok := ParseSessionToken(strings.Repeat("1.", maxSessionTokenLen)); ok {
		t.Error("an over-long token must not parse")
	}
}

func TestSessionHandleHidesTheID(t *testing.T) {
	sid := newSessionID()
	h := SessionHandle(sid)
	if len(h) != 10 || strings.Contains(sid, h) || h != SessionHandle(sid) {
		t.Fatalf("SessionHandle(%s) = %q: want 10 stable characters that are not part of the id", sid, h)
	}
}
