// Package storetest is the conformance suite that every session and presence
// store must pass (docs/architecture.md, invariant 7): the memory store and the Redis
// store run the same subtests, so that the gateway relies on one behaviour
// whichever store serves it.
//
// It checks what the gateway relies on: sessions round-trip every field; a
// removed session is gone for good and never revived by a late Save; an
// expired session is claimed by one caller at a time, for a lease, and
// removed by exactly one; the per-socket limit of Create holds however many
// Creates race; locks exclude; presence updates keep their place, and an
// owner's entries are removed (and so announced as leaving) exactly once,
// whoever races.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

// Store is what a store implementation provides to the gateway.
type Store interface {
	gateway.SessionStore
	gateway.PresenceStore
}

// NewStore returns a fresh, empty store for one subtest, isolated from the
// stores of other subtests (Claim must not see their sessions). Register any
// cleanup with t.Cleanup.
//
// The suite's deadlines lie an hour or more in the future of the wall clock,
// and Claim is called with explicit times later than them: a store may
// therefore also let its keys expire by wall-clock TTLs, as long as those are
// not shorter than the deadlines. The exception is the per-socket limit of
// Create, which compares deadlines with the wall clock: one subtest creates
// a session whose deadline has just passed, which must stay stored (as one
// not yet claimed) but not count.
type NewStore func(t *testing.T) Store

// waitTimeout bounds waits for things that must happen; only a broken store
// reaches it.
const waitTimeout = 5 * time.Second

// Run runs the conformance subtests, each against its own store made by
// newStore.
func Run(t *testing.T, newStore NewStore) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s Store)
	}{
		{"CreateLoadRoundTrip", testCreateLoadRoundTrip},
		{"CreateExistingFails", testCreateExistingFails},
		{"LoadUnknown", testLoadUnknown},
		{"SaveReplaces", testSaveReplaces},
		{"SaveGoneSessionDoesNotRevive", testSaveGoneDoesNotRevive},
		{"TouchMovesDeadline", testTouchMovesDeadline},
		{"TouchUnknown", testTouchUnknown},
		{"TouchManyMovesDeadlines", touchManyBoth(testTouchManyMovesDeadlines)},
		{"TouchManyReportsGone", touchManyBoth(testTouchManyReportsGone)},
		{"ClaimOnlyExpired", testClaimOnlyExpired},
		{"ClaimRespectsLimit", testClaimRespectsLimit},
		{"ClaimLeases", testClaimLeases},
		{"ConcurrentClaimsExactlyOnce", testConcurrentClaims},
		{"RemoveOnce", testRemoveOnce},
		{"ConcurrentRemoveExactlyOnce", testConcurrentRemove},
		{"RemoveRacesClaimExactlyOnce", testRemoveRacesClaim},
		{"BySocket", testBySocket},
		{"CreateLimitPerSocket", testCreateLimit},
		{"ConcurrentCreatesRespectLimit", testConcurrentCreatesLimit},
		{"LockExcludes", testLockExcludes},
		{"LockLoad", testLockLoad},
		{"LockDeadline", testLockDeadline},
		{"LocksOfDifferentIDsAreIndependent", testLocksIndependent},
		{"LockMutualExclusionUnderContention", testLockContention},
		{"ValuesAreCopies", testValuesAreCopies},
		{"PresencePutNew", testPresencePutNew},
		{"PresencePutReplaceKeepsPlace", testPresencePutReplace},
		{"PresenceListOrder", testPresenceListOrder},
		{"PresenceTopicsAreIsolated", testPresenceTopicsIsolated},
		{"PresenceRemoveOwner", testPresenceRemoveOwner},
		{"PresenceConcurrentRemoveExactlyOnce", testPresenceConcurrentRemove},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

// --- fixtures and helpers ---

// base is the reference deadline of a subtest: an hour ahead of the clock.
func base() time.Time { return time.Now().Add(time.Hour).Truncate(time.Millisecond) }

// sid returns a session id of the shape the gateway makes (32 hex digits).
func sid(n int) string { return fmt.Sprintf("5e55%028x", n) }

func strp(s string) *string { return &s }

// fullSession returns a session with every field set, for user id uid (a JSON
// number or string).
func fullSession(id string, uid string) *gateway.Session {
	return &gateway.Session{
		ID:     id,
		UserID: json.RawMessage(uid),
		Name:   "Ana Núñez 🌵",
		Vsn:    "2.0.0",
		Channels: map[string]*gateway.ChannelState{
			"sala:lobby": {
				Topic:   "sala:lobby",
				JoinRef: strp("3"),
				Slot:    0,
				Since:   1795700000000123,
				Assigns: map[string]json.RawMessage{
					"count": json.RawMessage(`7`),
					"nick":  json.RawMessage(`"ana"`),
					"prefs": json.RawMessage(`{"theme":"dark","tags":["a","b"],"n":null}`),
				},
			},
			"notificaciones:42": {
				Topic:   "notificaciones:42",
				JoinRef: nil,
				Slot:    1,
				Since:   0,
			},
			"sala:vacía": {
				Topic:   "sala:vacía",
				JoinRef: strp(""),
				Slot:    4,
				Since:   18446744073709551615, // max uint64
				Assigns: map[string]json.RawMessage{"ok": json.RawMessage(`true`)},
			},
		},
		NextSlot:   5,
		RecentRefs: []string{"sala:lobby\x003", "phoenix\x004", "sala:lobby\x005"},
		CreatedAt:  time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC),
		Outbox: []gateway.PendingRecord{
			{Topic: "m:" + id, Data: json.RawMessage(`{"ts":1795700000000000001,"r":"5","t":"sala:lobby","e":"phx_reply","p":{"response":{"ñ":"🌵"},"status":"ok"}}`)},
			{Topic: "t:sala:lobby", Data: json.RawMessage(`{"ts":1795700000000000002,"t":"sala:lobby","e":"nuevo","p":{}}`)},
		},
	}
}

// minimalSession returns a session with only the fields every session has.
func minimalSession(id string, uid string) *gateway.Session {
	return &gateway.Session{ID: id, UserID: json.RawMessage(uid), Vsn: "1.0.0", CreatedAt: time.Now().UTC()}
}

func create(t *testing.T, st Store, s *gateway.Session, deadline time.Time) {
	t.Helper()
	if err := st.Create(t.Context(), s, deadline, 0); err != nil {
		t.Fatalf("Create(%s): %v", s.ID, err)
	}
}

func load(t *testing.T, st Store, id string) *gateway.Session {
	t.Helper()
	s, err := st.Load(t.Context(), id)
	if err != nil {
		t.Fatalf("Load(%s): %v", id, err)
	}
	return s
}

// lease is the lease the suite claims with: longer than any gap between the
// explicit times of one subtest, so a claimed session is not claimed again
// unless a subtest means it to be.
const lease = time.Hour

func claim(t *testing.T, st Store, now time.Time, limit int) []*gateway.Session {
	t.Helper()
	got, err := st.Claim(t.Context(), now, lease, limit)
	if err != nil {
		t.Fatalf("Claim(limit %d): %v", limit, err)
	}
	return got
}

func bySocket(t *testing.T, st Store, socketID string) []string {
	t.Helper()
	ids, err := st.BySocket(t.Context(), socketID)
	if err != nil {
		t.Fatalf("BySocket(%q): %v", socketID, err)
	}
	return ids
}

func ids(ss []*gateway.Session) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.ID
	}
	return out
}

// wantGone asserts that the session id no longer exists in any respect.
func wantGone(t *testing.T, st Store, id, socketID, what string) {
	t.Helper()
	if _, err := st.Load(t.Context(), id); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("%s: Load(%s) = %v, want ErrNoSession", what, id, err)
	}
	if slices.Contains(bySocket(t, st, socketID), id) {
		t.Errorf("%s: BySocket(%q) still lists %s", what, socketID, id)
	}
}

// jsonEqual reports whether a and b hold the same JSON value (both empty
// counts as equal).
func jsonEqual(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return string(a) == string(b)
	}
	return reflect.DeepEqual(va, vb)
}

// diffSession describes how got differs from want ("" if it does not). Nil
// and empty maps and slices are equal; JSON values compare by value.
func diffSession(want, got *gateway.Session) string {
	if got == nil {
		return "got nil session"
	}
	var d []string
	add := func(format string, args ...any) { d = append(d, fmt.Sprintf(format, args...)) }
	if got.ID != want.ID {
		add("ID %q, want %q", got.ID, want.ID)
	}
	if !jsonEqual(got.UserID, want.UserID) {
		add("UserID %s, want %s", got.UserID, want.UserID)
	}
	if got.Name != want.Name {
		add("Name %q, want %q", got.Name, want.Name)
	}
	if got.Vsn != want.Vsn {
		add("Vsn %q, want %q", got.Vsn, want.Vsn)
	}
	if got.NextSlot != want.NextSlot {
		add("NextSlot %d, want %d", got.NextSlot, want.NextSlot)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) {
		add("CreatedAt %v, want %v", got.CreatedAt, want.CreatedAt)
	}
	if len(got.RecentRefs) != len(want.RecentRefs) || (len(want.RecentRefs) > 0 && !slices.Equal(got.RecentRefs, want.RecentRefs)) {
		add("RecentRefs %q, want %q", got.RecentRefs, want.RecentRefs)
	}
	if !slices.EqualFunc(got.Outbox, want.Outbox, func(a, b gateway.PendingRecord) bool { return a.Topic == b.Topic && jsonEqual(a.Data, b.Data) }) {
		add("Outbox %v, want %v", got.Outbox, want.Outbox)
	}
	if len(got.Channels) != len(want.Channels) {
		add("%d channels, want %d", len(got.Channels), len(want.Channels))
	}
	for topic, wc := range want.Channels {
		gc := got.Channels[topic]
		if gc == nil {
			add("channel %q missing", topic)
			continue
		}
		if gc.Topic != wc.Topic {
			add("channel %q: Topic %q, want %q", topic, gc.Topic, wc.Topic)
		}
		switch {
		case (gc.JoinRef == nil) != (wc.JoinRef == nil):
			add("channel %q: JoinRef %s, want %s", topic, refString(gc.JoinRef), refString(wc.JoinRef))
		case gc.JoinRef != nil && *gc.JoinRef != *wc.JoinRef:
			add("channel %q: JoinRef %s, want %s", topic, refString(gc.JoinRef), refString(wc.JoinRef))
		}
		if gc.Slot != wc.Slot {
			add("channel %q: Slot %d, want %d", topic, gc.Slot, wc.Slot)
		}
		if gc.Since != wc.Since {
			add("channel %q: Since %d, want %d", topic, gc.Since, wc.Since)
		}
		if len(gc.Assigns) != len(wc.Assigns) {
			add("channel %q: %d assigns, want %d", topic, len(gc.Assigns), len(wc.Assigns))
		}
		for k, wv := range wc.Assigns {
			if gv, ok := gc.Assigns[k]; !ok || !jsonEqual(gv, wv) {
				add("channel %q: assign %q = %s, want %s", topic, k, gv, wv)
			}
		}
	}
	for topic := range got.Channels {
		if _, ok := want.Channels[topic]; !ok {
			add("unexpected channel %q", topic)
		}
	}
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprint(d)
}

func refString(p *string) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprintf("%q", *p)
}

func wantSession(t *testing.T, what string, want, got *gateway.Session) {
	t.Helper()
	if d := diffSession(want, got); d != "" {
		t.Errorf("%s: %s", what, d)
	}
}

// --- sessions ---

func testCreateLoadRoundTrip(t *testing.T, st Store) {
	d := base()
	cases := []*gateway.Session{
		fullSession(sid(1), `42`),            // numeric user id
		fullSession(sid(2), `"alice"`),       // string user id
		fullSession(sid(3), `"42"`),          // string that looks like a number
		minimalSession(sid(4), `9007199254`), // no channels, refs or name
	}
	for _, s := range cases {
		create(t, st, s, d)
	}
	for _, want := range cases {
		got := load(t, st, want.ID)
		wantSession(t, "Load("+want.ID+")", want, got)
		if got.UserKey() != want.UserKey() || got.SocketID() != want.SocketID() {
			t.Errorf("Load(%s): user key %q / socket id %q, want %q / %q", want.ID, got.UserKey(), got.SocketID(), want.UserKey(), want.SocketID())
		}
	}
	// A number and a string user id stay distinct.
	if got := load(t, st, sid(1)); string(got.UserID) != "42" {
		t.Errorf("numeric UserID came back as %s, want 42", got.UserID)
	}
	if got := load(t, st, sid(3)); string(got.UserID) != `"42"` {
		t.Errorf("string UserID came back as %s, want \"42\"", got.UserID)
	}
}

func testCreateExistingFails(t *testing.T, st Store) {
	d := base()
	orig := fullSession(sid(1), `42`)
	create(t, st, orig, d)
	dup := minimalSession(sid(1), `"mallory"`)
	if err := st.Create(t.Context(), dup, d.Add(time.Hour), 0); err == nil {
		t.Fatal("Create of an existing id succeeded")
	}
	wantSession(t, "Load after a refused Create", orig, load(t, st, sid(1)))
	if got := bySocket(t, st, dup.SocketID()); len(got) != 0 {
		t.Errorf("a refused Create registered the session under %q: %v", dup.SocketID(), got)
	}
	if got := bySocket(t, st, orig.SocketID()); !slices.Equal(got, []string{sid(1)}) {
		t.Errorf("BySocket(%q) = %v after a refused Create, want [%s]", orig.SocketID(), got, sid(1))
	}
	// The refused Create did not move the original's deadline either.
	if got := claim(t, st, d.Add(time.Minute), 10); !slices.Equal(ids(got), []string{sid(1)}) {
		t.Errorf("Claim after the original deadline = %v, want [%s]", ids(got), sid(1))
	}
}

func testLoadUnknown(t *testing.T, st Store) {
	for _, id := range []string{sid(99), "", "not-a-session-id"} {
		s, err := st.Load(t.Context(), id)
		if !errors.Is(err, gateway.ErrNoSession) {
			t.Errorf("Load(%q) = %v, %v; want ErrNoSession", id, s, err)
		}
	}
}

func testSaveReplaces(t *testing.T, st Store) {
	d := base()
	s := fullSession(sid(1), `42`)
	create(t, st, s, d)

	s2 := load(t, st, sid(1))
	s2.Name = "renamed"
	s2.NextSlot = 6
	s2.RecentRefs = append(s2.RecentRefs, "sala:nueva\x009")
	delete(s2.Channels, "notificaciones:42")
	s2.Channels["sala:lobby"].Assigns["count"] = json.RawMessage(`8`)
	s2.Channels["sala:lobby"].JoinRef = nil
	s2.Channels["sala:nueva"] = &gateway.ChannelState{Topic: "sala:nueva", JoinRef: strp("9"), Slot: 5, Since: 77}
	want := load(t, st, sid(1)) // an independent copy to build the expectation
	want.Name, want.NextSlot, want.RecentRefs = s2.Name, s2.NextSlot, slices.Clone(s2.RecentRefs)
	delete(want.Channels, "notificaciones:42")
	want.Channels["sala:lobby"].Assigns["count"] = json.RawMessage(`8`)
	want.Channels["sala:lobby"].JoinRef = nil
	want.Channels["sala:nueva"] = &gateway.ChannelState{Topic: "sala:nueva", JoinRef: strp("9"), Slot: 5, Since: 77}

	if err := st.Save(t.Context(), s2); err != nil {
		t.Fatalf("Save: %v", err)
	}
	wantSession(t, "Load after Save", want, load(t, st, sid(1)))

	// Saving everything away: the channels and refs go.
	s3 := load(t, st, sid(1))
	s3.Channels, s3.RecentRefs, s3.Outbox = nil, nil, nil
	if err := st.Save(t.Context(), s3); err != nil {
		t.Fatalf("Save: %v", err)
	}
	got := load(t, st, sid(1))
	if len(got.Channels) != 0 || len(got.RecentRefs) != 0 || len(got.Outbox) != 0 {
		t.Errorf("after saving no channels, refs and outbox, Load has %d channels, refs %q and outbox %v", len(got.Channels), got.RecentRefs, got.Outbox)
	}

	// Save neither moves the deadline nor unregisters the socket.
	if got := claim(t, st, d.Add(-time.Minute), 10); len(got) != 0 {
		t.Errorf("Claim before the deadline after Save = %v, want none", ids(got))
	}
	if got := bySocket(t, st, s.SocketID()); !slices.Equal(got, []string{sid(1)}) {
		t.Errorf("BySocket after Save = %v, want [%s]", got, sid(1))
	}
	if got := claim(t, st, d.Add(time.Minute), 10); !slices.Equal(ids(got), []string{sid(1)}) {
		t.Errorf("Claim after the deadline after Save = %v, want [%s]", ids(got), sid(1))
	}
}

func testSaveGoneDoesNotRevive(t *testing.T, st Store) {
	d := base()
	// Never created.
	never := fullSession(sid(1), `42`)
	if err := st.Save(t.Context(), never); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("Save of a never-created session = %v, want ErrNoSession", err)
	}
	wantGone(t, st, sid(1), never.SocketID(), "after Save of a never-created session")

	// Removed while a request held a copy.
	removed := fullSession(sid(2), `42`)
	create(t, st, removed, d)
	held := load(t, st, sid(2))
	if _, err := st.Remove(t.Context(), sid(2)); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	held.Name = "late write"
	if err := st.Save(t.Context(), held); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("Save of a removed session = %v, want ErrNoSession", err)
	}
	wantGone(t, st, sid(2), removed.SocketID(), "after Save of a removed session")

	// Claimed (expired, being ended) while a request held a copy: the
	// session is still there until removed, and a Save keeps the lease.
	expired := fullSession(sid(3), `"bob"`)
	create(t, st, expired, d)
	held = load(t, st, sid(3))
	if got := claim(t, st, d.Add(time.Minute), 10); !slices.Equal(ids(got), []string{sid(3)}) {
		t.Fatalf("Claim = %v, want [%s]", ids(got), sid(3))
	}
	if err := st.Save(t.Context(), held); err != nil {
		t.Errorf("Save of a claimed, not yet removed session = %v, want nil", err)
	}
	if got := claim(t, st, d.Add(30*time.Minute), 10); len(got) != 0 {
		t.Errorf("Save cut the lease short: claimed again within it: %v", ids(got))
	}
	if _, err := st.Remove(t.Context(), sid(3)); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := st.Save(t.Context(), held); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("Save of a claimed and removed session = %v, want ErrNoSession", err)
	}
	wantGone(t, st, sid(3), expired.SocketID(), "after Save of a removed session")
	if got := claim(t, st, d.Add(3*time.Hour), 10); len(got) != 0 {
		t.Errorf("a late Save revived a removed session: %v", ids(got))
	}
}

func testTouchMovesDeadline(t *testing.T, st Store) {
	d := base()
	create(t, st, minimalSession(sid(1), `1`), d)
	create(t, st, minimalSession(sid(2), `2`), d.Add(time.Hour))

	// Later: not claimed before the new deadline, claimed after it.
	if _, err := st.Touch(t.Context(), sid(1), d.Add(10*time.Minute)); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	if got := claim(t, st, d.Add(5*time.Minute), 10); len(got) != 0 {
		t.Errorf("Claim between the old and the new deadline = %v, want none", ids(got))
	}
	if got := claim(t, st, d.Add(11*time.Minute), 10); !slices.Equal(ids(got), []string{sid(1)}) {
		t.Errorf("Claim after the new deadline = %v, want [%s]", ids(got), sid(1))
	}

	// Earlier (the gateway shortens the deadline when a long poll ends).
	if _, err := st.Touch(t.Context(), sid(2), d); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	if got := claim(t, st, d.Add(-time.Minute), 10); len(got) != 0 {
		t.Errorf("Claim before the shortened deadline = %v, want none", ids(got))
	}
	if got := claim(t, st, d.Add(time.Minute), 10); !slices.Equal(ids(got), []string{sid(2)}) {
		t.Errorf("Claim after the shortened deadline = %v, want [%s]", ids(got), sid(2))
	}
}

func testTouchUnknown(t *testing.T, st Store) {
	d := base()
	if _, err := st.Touch(t.Context(), sid(1), d); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("Touch of a never-created session = %v, want ErrNoSession", err)
	}
	create(t, st, minimalSession(sid(2), `2`), d)
	if _, err := st.Remove(t.Context(), sid(2)); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := st.Touch(t.Context(), sid(2), d.Add(time.Hour)); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("Touch of a removed session = %v, want ErrNoSession", err)
	}
	wantGone(t, st, sid(2), "user_socket:2", "after Touch of a removed session")
	if _, err := st.Load(t.Context(), sid(1)); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("Touch created a session: Load = %v", err)
	}
}

// touchManyBoth runs a TouchMany test with renew and without: both move
// deadlines, neither revives, and both report removed and unknown ids gone.
func touchManyBoth(fn func(t *testing.T, st Store, renew bool)) func(t *testing.T, st Store) {
	return func(t *testing.T, st Store) {
		fn(t, st, false)
		if !t.Failed() {
			// The same store: the renewing run uses other ids, and later
			// deadlines (the first run removes what it made).
			fn(t, st, true)
		}
	}
}

func testTouchManyMovesDeadlines(t *testing.T, st Store, renew bool) {
	o, d := 0, base()
	if renew {
		o = 10
	}
	made := make([]*gateway.Session, 3)
	for i := range made {
		made[i] = fullSession(sid(o+i), `1`)
		create(t, st, made[i], d)
	}
	gone, err := st.TouchMany(t.Context(), []string{sid(o), sid(o + 1)}, d.Add(10*time.Minute), renew)
	if err != nil || len(gone) != 0 {
		t.Fatalf("TouchMany (renew %v) of live sessions = %v, %v; want none gone", renew, gone, err)
	}
	if got := claim(t, st, d.Add(5*time.Minute), 10); !slices.Equal(ids(got), []string{sid(o + 2)}) {
		t.Errorf("Claim between the old and the new deadline = %v, want only the untouched [%s]", ids(got), sid(o+2))
	}
	if got := slices.Sorted(slices.Values(ids(claim(t, st, d.Add(11*time.Minute), 10)))); !slices.Equal(got, []string{sid(o), sid(o + 1)}) {
		t.Errorf("Claim after the new deadline = %v, want [%s %s]", got, sid(o), sid(o+1))
	}
	// The session's data is untouched.
	wantSession(t, "after TouchMany", made[0], load(t, st, sid(o)))
	if gone, err := st.TouchMany(t.Context(), nil, d, renew); err != nil || len(gone) != 0 {
		t.Errorf("TouchMany of no ids = %v, %v; want nothing", gone, err)
	}
	removeAll(t, st, sid(o), sid(o+1), sid(o+2))
}

func testTouchManyReportsGone(t *testing.T, st Store, renew bool) {
	o, d := 0, base()
	if renew {
		o = 10
	}
	create(t, st, minimalSession(sid(o+1), `1`), d)
	create(t, st, minimalSession(sid(o+2), `2`), d)
	if _, err := st.Remove(t.Context(), sid(o+2)); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	gone, err := st.TouchMany(t.Context(), []string{sid(o + 3), sid(o + 1), sid(o + 2)}, d.Add(time.Hour), renew)
	if err != nil {
		t.Fatalf("TouchMany (renew %v): %v", renew, err)
	}
	slices.Sort(gone)
	if want := []string{sid(o + 2), sid(o + 3)}; !slices.Equal(gone, want) {
		t.Errorf("TouchMany (renew %v) gone = %v, want the removed and the never-created %v", renew, gone, want)
	}
	// Neither revived nor created.
	wantGone(t, st, sid(o+2), "user_socket:2", "after TouchMany of a removed session")
	if _, err := st.Load(t.Context(), sid(o+3)); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("TouchMany created a session: Load = %v", err)
	}
	if got := claim(t, st, d.Add(2*time.Hour), 10); !slices.Equal(ids(got), []string{sid(o + 1)}) {
		t.Errorf("Claim after every deadline = %v, want only the live [%s]", ids(got), sid(o+1))
	}
	removeAll(t, st, sid(o+1))
}

// removeAll removes the sessions a test made, as their claimer would.
func removeAll(t *testing.T, st Store, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := st.Remove(t.Context(), id); err != nil {
			t.Fatalf("Remove %s: %v", id, err)
		}
	}
}

func testClaimOnlyExpired(t *testing.T, st Store) {
	d := base()
	for i := range 3 {
		create(t, st, fullSession(sid(i), `7`), d.Add(time.Duration(i)*time.Minute)) // d, d+1m, d+2m
	}
	create(t, st, fullSession(sid(10), `7`), d.Add(time.Hour))
	if got := claim(t, st, d.Add(-time.Second), 10); len(got) != 0 {
		t.Errorf("Claim before every deadline = %v, want none", ids(got))
	}
	got := claim(t, st, d.Add(90*time.Second), 10)
	slices.SortFunc(got, func(a, b *gateway.Session) int { return cmpString(a.ID, b.ID) })
	if !slices.Equal(ids(got), []string{sid(0), sid(1)}) {
		t.Fatalf("Claim at d+90s = %v, want [%s %s]", ids(got), sid(0), sid(1))
	}
	for _, s := range got {
		wantSession(t, "claimed session", fullSession(s.ID, `7`), s)
	}
	if got := claim(t, st, d.Add(90*time.Second), 10); len(got) != 0 {
		t.Errorf("second Claim at the same time = %v, want none", ids(got))
	}
	if got := claim(t, st, d.Add(3*time.Minute), 10); !slices.Equal(ids(got), []string{sid(2)}) {
		t.Errorf("Claim at d+3m = %v, want [%s]", ids(got), sid(2))
	}
	// Claimed sessions stay until their claimer removes them.
	if got := bySocket(t, st, "user_socket:7"); len(got) != 4 {
		t.Errorf("BySocket after the claims = %v, want all 4 sessions", got)
	}
	for i := range 3 {
		if _, err := st.Remove(t.Context(), sid(i)); err != nil {
			t.Fatalf("Remove(%s): %v", sid(i), err)
		}
	}
	load(t, st, sid(10)) // the live session is still there
	if got := bySocket(t, st, "user_socket:7"); !slices.Equal(got, []string{sid(10)}) {
		t.Errorf("BySocket after removing the claimed = %v, want [%s]", got, sid(10))
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func testClaimRespectsLimit(t *testing.T, st Store) {
	d := base()
	for i := range 5 {
		create(t, st, minimalSession(sid(i), `1`), d)
	}
	create(t, st, minimalSession(sid(9), `1`), d.Add(time.Hour))
	seen := map[string]bool{}
	// The gateway claims in batches and takes a short batch as the last one,
	// so a Claim returns min(limit, expired remaining).
	for i, want := range []int{2, 2, 1, 0} {
		got := claim(t, st, d.Add(time.Minute), 2)
		if len(got) != want {
			t.Errorf("Claim %d with limit 2 returned %d sessions %v, want %d", i+1, len(got), ids(got), want)
		}
		for _, s := range got {
			if seen[s.ID] {
				t.Errorf("session %s claimed twice", s.ID)
			}
			seen[s.ID] = true
		}
	}
	if len(seen) != 5 {
		t.Errorf("claimed %d distinct sessions, want 5", len(seen))
	}
	if seen[sid(9)] {
		t.Errorf("the live session was claimed")
	}
	for id := range seen {
		if _, err := st.Remove(t.Context(), id); err != nil {
			t.Fatalf("Remove(%s): %v", id, err)
		}
	}
	if got := claim(t, st, d.Add(2*time.Hour), 1); !slices.Equal(ids(got), []string{sid(9)}) {
		t.Errorf("Claim(limit 1) = %v, want [%s]", ids(got), sid(9))
	}
}

func testClaimLeases(t *testing.T, st Store) {
	d := base()
	s := fullSession(sid(1), `"carol"`)
	create(t, st, s, d)
	got := claim(t, st, d.Add(time.Minute), 10)
	if len(got) != 1 {
		t.Fatalf("Claim = %v, want 1 session", ids(got))
	}
	wantSession(t, "claimed session", s, got[0])
	// Until its claimer removes it, the session is still there...
	load(t, st, sid(1))
	// ...and not claimed again within the lease...
	if got := claim(t, st, d.Add(time.Minute+lease/2), 10); len(got) != 0 {
		t.Errorf("Claim within the lease = %v, want none", ids(got))
	}
	// ...but claimed again after it, as when its claimer died.
	if got := claim(t, st, d.Add(time.Minute+lease+time.Second), 10); !slices.Equal(ids(got), []string{sid(1)}) {
		t.Errorf("Claim after the lease = %v, want [%s]", ids(got), sid(1))
	}
	if _, err := st.Remove(t.Context(), sid(1)); err != nil {
		t.Fatalf("Remove of a claimed session: %v", err)
	}
	wantGone(t, st, sid(1), s.SocketID(), "after Claim and Remove")
	if _, err := st.Touch(t.Context(), sid(1), d.Add(time.Hour)); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("Touch of a removed session = %v, want ErrNoSession", err)
	}
	if got := claim(t, st, d.Add(10*lease), 10); len(got) != 0 {
		t.Errorf("a removed session was claimed: %v", ids(got))
	}
	// The id is free again: a new session may take it.
	create(t, st, minimalSession(sid(1), `"carol"`), d.Add(time.Hour))
	load(t, st, sid(1))
}

func testConcurrentClaims(t *testing.T, st Store) {
	d := base()
	const expired, live, claimers = 50, 5, 4
	for i := range expired {
		create(t, st, minimalSession(sid(i), fmt.Sprint(i%3)), d.Add(-time.Duration(i)*time.Second))
	}
	for i := range live {
		create(t, st, minimalSession(sid(100+i), `0`), d.Add(time.Hour))
	}
	now := d.Add(time.Minute)
	var mu sync.Mutex
	count := map[string]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range claimers {
		wg.Go(func() {
			<-start
			for range expired + 1 {
				got, err := st.Claim(context.Background(), now, lease, 7)
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				if len(got) > 7 {
					t.Errorf("Claim(limit 7) returned %d sessions", len(got))
				}
				mu.Lock()
				for _, s := range got {
					count[s.ID]++
				}
				mu.Unlock()
				if len(got) == 0 {
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if rest := claim(t, st, now, 100); len(rest) != 0 {
		t.Errorf("after the claimers stopped, %d expired sessions were still unclaimed", len(rest))
		for _, s := range rest {
			count[s.ID]++
		}
	}
	for id, n := range count {
		if n != 1 {
			t.Errorf("session %s was claimed %d times", id, n)
		}
	}
	for i := range expired {
		if count[sid(i)] == 0 {
			t.Errorf("expired session %s was never claimed", sid(i))
		}
	}
	for i := range live {
		if count[sid(100+i)] != 0 {
			t.Errorf("live session %s was claimed", sid(100+i))
		}
	}
	if len(count) != expired {
		t.Errorf("%d distinct sessions claimed, want %d", len(count), expired)
	}
}

func testRemoveOnce(t *testing.T, st Store) {
	d := base()
	s := fullSession(sid(1), `42`)
	create(t, st, s, d)
	got, err := st.Remove(t.Context(), sid(1))
	if err != nil {
		t.Fatalf("Remove: %v", err)
	}
	wantSession(t, "Remove", s, got)
	if again, err := st.Remove(t.Context(), sid(1)); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("second Remove = %v, %v; want ErrNoSession", again, err)
	}
	wantGone(t, st, sid(1), s.SocketID(), "after Remove")
	if got := claim(t, st, d.Add(time.Hour), 10); len(got) != 0 {
		t.Errorf("a removed session was claimed: %v", ids(got))
	}
	if _, err := st.Remove(t.Context(), sid(2)); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("Remove of a never-created session = %v, want ErrNoSession", err)
	}
}

func testConcurrentRemove(t *testing.T, st Store) {
	d := base()
	const rounds, racers = 10, 6
	for r := range rounds {
		create(t, st, minimalSession(sid(r), `1`), d)
	}
	for r := range rounds {
		var wins atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range racers {
			wg.Go(func() {
				<-start
				s, err := st.Remove(context.Background(), sid(r))
				switch {
				case err == nil && s != nil && s.ID == sid(r):
					wins.Add(1)
				case errors.Is(err, gateway.ErrNoSession):
				default:
					t.Errorf("Remove(%s) = %v, %v", sid(r), s, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Errorf("round %d: %d of %d racing Removes returned the session, want exactly 1", r, n, racers)
		}
	}
}

func testRemoveRacesClaim(t *testing.T, st Store) {
	// A session expiring (claimed, then removed by a sweeper) while it is
	// disconnected (removed): exactly one Remove returns it, so its
	// departure is announced once.
	d := base()
	const n = 20
	for i := range n {
		create(t, st, minimalSession(sid(i), `1`), d)
	}
	var mu sync.Mutex
	removed := map[string]int{}
	remove := func(id string) {
		s, err := st.Remove(context.Background(), id)
		switch {
		case err == nil:
			mu.Lock()
			removed[s.ID]++
			mu.Unlock()
		case !errors.Is(err, gateway.ErrNoSession):
			t.Errorf("Remove(%s): %v", id, err)
		}
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	wg.Go(func() {
		<-start
		for i := range n {
			remove(sid(i))
		}
	})
	for range 2 {
		wg.Go(func() {
			<-start
			for range n {
				got, err := st.Claim(context.Background(), d.Add(time.Minute), lease, 3)
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				for _, s := range got {
					remove(s.ID)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if c := removed[sid(i)]; c != 1 {
			t.Errorf("session %s was returned by %d Removes, want exactly 1", sid(i), c)
		}
	}
	if got := claim(t, st, d.Add(10*lease), 100); len(got) != 0 {
		t.Errorf("removed sessions were claimed: %v", ids(got))
	}
}

func testBySocket(t *testing.T, st Store) {
	d := base()
	// Created out of order; BySocket sorts.
	for _, i := range []int{3, 1, 2} {
		create(t, st, minimalSession(sid(i), `7`), d)
	}
	create(t, st, minimalSession(sid(4), `"alice"`), d)
	create(t, st, minimalSession(sid(5), `70`), d) // a user key that extends "7"
	want7 := []string{sid(1), sid(2), sid(3)}
	if got := bySocket(t, st, "user_socket:7"); !slices.Equal(got, want7) {
		t.Errorf("BySocket(user_socket:7) = %v, want %v", got, want7)
	}
	if got := bySocket(t, st, "user_socket:alice"); !slices.Equal(got, []string{sid(4)}) {
		t.Errorf("BySocket(user_socket:alice) = %v, want [%s]", got, sid(4))
	}
	if got := bySocket(t, st, "user_socket:70"); !slices.Equal(got, []string{sid(5)}) {
		t.Errorf("BySocket(user_socket:70) = %v, want [%s]", got, sid(5))
	}
	for _, unknown := range []string{"user_socket:nobody", "user_socket:", "", "7"} {
		if got := bySocket(t, st, unknown); len(got) != 0 {
			t.Errorf("BySocket(%q) = %v, want none", unknown, got)
		}
	}
	if _, err := st.Remove(t.Context(), sid(2)); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if got := bySocket(t, st, "user_socket:7"); !slices.Equal(got, []string{sid(1), sid(3)}) {
		t.Errorf("BySocket after Remove = %v, want [%s %s]", got, sid(1), sid(3))
	}
	// Save and Touch keep the session listed.
	s := load(t, st, sid(1))
	s.Name = "saved"
	if err := st.Save(t.Context(), s); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if _, err := st.Touch(t.Context(), sid(3), d.Add(time.Hour)); err != nil {
		t.Fatalf("Touch: %v", err)
	}
	if got := bySocket(t, st, "user_socket:7"); !slices.Equal(got, []string{sid(1), sid(3)}) {
		t.Errorf("BySocket after Save and Touch = %v, want [%s %s]", got, sid(1), sid(3))
	}
	for _, id := range []string{sid(1), sid(3), sid(4)} {
		if _, err := st.Remove(t.Context(), id); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}
	if got := bySocket(t, st, "user_socket:7"); len(got) != 0 {
		t.Errorf("BySocket after removing every session = %v, want none", got)
	}
	if got := bySocket(t, st, "user_socket:alice"); len(got) != 0 {
		t.Errorf("BySocket(alice) after Remove = %v, want none", got)
	}
}

// --- locks ---

func lock(t *testing.T, st Store, id string) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	unlock, err := st.Lock(ctx, id)
	if err != nil {
		t.Fatalf("Lock(%s): %v", id, err)
	}
	return unlock
}

func testLockLoad(t *testing.T, st Store) {
	d := base()
	made := fullSession(sid(1), `1`)
	create(t, st, made, d)
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	unlock, got, err := st.LockLoad(ctx, sid(1))
	if err != nil {
		t.Fatalf("LockLoad: %v", err)
	}
	wantSession(t, "LockLoad", made, got)
	// It holds the lock: a Lock waits for it (here, until its deadline).
	short, cancelShort := context.WithTimeout(t.Context(), 20*time.Millisecond)
	if u, err := st.Lock(short, sid(1)); err == nil {
		u()
		t.Error("Lock succeeded while LockLoad held the lock")
	}
	cancelShort()
	// A change saved under the lock is what the next LockLoad reads.
	got.NextSlot = 7
	if err := st.Save(ctx, got); err != nil {
		t.Fatalf("Save: %v", err)
	}
	unlock()
	unlock2, again, err := st.LockLoad(ctx, sid(1))
	if err != nil {
		t.Fatalf("LockLoad after unlock: %v", err)
	}
	if again.NextSlot != 7 {
		t.Errorf("LockLoad after a Save read NextSlot %d, want 7", again.NextSlot)
	}
	unlock2()

	// A session that is gone: ErrNoSession, and no lock left held.
	if _, _, err := st.LockLoad(ctx, sid(2)); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("LockLoad of an unknown session = %v, want ErrNoSession", err)
	}
	lock(t, st, sid(2))()
	lock(t, st, sid(1))()
}

func testLockExcludes(t *testing.T, st Store) {
	unlock := lock(t, st, sid(1))
	acquired := make(chan func())
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		u, err := st.Lock(ctx, sid(1))
		if err != nil {
			t.Errorf("second Lock: %v", err)
			close(acquired)
			return
		}
		acquired <- u
	}()
	select {
	case u := <-acquired:
		if u != nil {
			u()
		}
		t.Fatal("second Lock succeeded while the first was held")
	case <-time.After(5 * time.Millisecond):
	}
	unlock()
	select {
	case u, ok := <-acquired:
		if !ok {
			return // the goroutine reported its error
		}
		u()
	case <-time.After(waitTimeout):
		t.Fatal("second Lock did not succeed after unlock")
	}
	// Free again.
	lock(t, st, sid(1))()
}

func testLockDeadline(t *testing.T, st Store) {
	unlock := lock(t, st, sid(1))
	defer unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	start := time.Now()
	u, err := st.Lock(ctx, sid(1))
	if err == nil {
		u()
		t.Fatal("Lock of a held lock succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock past its deadline = %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > waitTimeout {
		t.Errorf("Lock gave up after %v, long after its 10ms deadline", elapsed)
	}
}

func testLocksIndependent(t *testing.T, st Store) {
	unlock1 := lock(t, st, sid(1))
	defer unlock1()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	unlock2, err := st.Lock(ctx, sid(2))
	if err != nil {
		t.Fatalf("Lock of another id while one is held: %v", err)
	}
	unlock2()
}

func testLockContention(t *testing.T, st Store) {
	const workers, each = 4, 10
	var inside atomic.Int32
	counter := 0 // guarded by the store's lock only: the race detector checks it
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				unlock, err := st.Lock(ctx, sid(1))
				cancel()
				if err != nil {
					t.Errorf("Lock: %v", err)
					return
				}
				if n := inside.Add(1); n != 1 {
					t.Errorf("%d holders of the same lock at once", n)
				}
				counter++
				inside.Add(-1)
				unlock()
			}
		})
	}
	wg.Wait()
	if counter != workers*each {
		t.Errorf("counter = %d, want %d", counter, workers*each)
	}
}

// --- per-socket limit ---

func createLimited(st Store, id, uid string, deadline time.Time, limit int) error {
	return st.Create(context.Background(), minimalSession(id, uid), deadline, limit)
}

func wantTooMany(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, gateway.ErrTooManySessions) {
		t.Errorf("%s: Create = %v, want an error wrapping ErrTooManySessions", what, err)
	}
}

func testCreateLimit(t *testing.T, st Store) {
	d := base()
	for _, i := range []int{1, 2} {
		if err := createLimited(st, sid(i), `7`, d, 2); err != nil {
			t.Fatalf("Create %d of 2 under a limit of 2: %v", i, err)
		}
	}
	wantTooMany(t, "a third session under a limit of 2", createLimited(st, sid(3), `7`, d, 2))
	wantGone(t, st, sid(3), "user_socket:7", "after a refused Create")
	if err := createLimited(st, sid(4), `70`, d, 2); err != nil {
		t.Errorf("another socket (whose key extends the first's) was limited: %v", err)
	}
	if err := createLimited(st, sid(5), `7`, d, 0); err != nil {
		t.Errorf("Create with limit 0 (none): %v", err)
	}
	wantTooMany(t, "three live sessions, limit 3", createLimited(st, sid(6), `7`, d, 3))
	if err := createLimited(st, sid(6), `7`, d, 4); err != nil {
		t.Errorf("Create with a limit above the count: %v", err)
	}
	// A removed session frees its place.
	for _, i := range []int{1, 5, 6} {
		if _, err := st.Remove(t.Context(), sid(i)); err != nil {
			t.Fatalf("Remove: %v", err)
		}
	}
	if err := createLimited(st, sid(7), `7`, d, 2); err != nil {
		t.Errorf("Create after Removes freed places: %v", err)
	}
	wantTooMany(t, "full again", createLimited(st, sid(8), `7`, d, 2))
	if got := bySocket(t, st, "user_socket:7"); !slices.Equal(got, []string{sid(2), sid(7)}) {
		t.Errorf("BySocket = %v, want [%s %s]", got, sid(2), sid(7))
	}
	// A session whose deadline passed does not count, though it is still
	// stored until it is claimed and removed; touched again, it counts.
	if err := createLimited(st, sid(10), `"exp"`, time.Now().Add(-time.Second), 1); err != nil {
		t.Fatalf("Create with a passed deadline: %v", err)
	}
	if err := createLimited(st, sid(11), `"exp"`, d, 1); err != nil {
		t.Errorf("an expired session counted for the limit: %v", err)
	}
	wantTooMany(t, "one live session, limit 1", createLimited(st, sid(12), `"exp"`, d, 1))
	if _, err := st.Touch(t.Context(), sid(10), d); err != nil {
		t.Fatalf("Touch of the expired, not removed session: %v", err)
	}
	wantTooMany(t, "the touched session counts again", createLimited(st, sid(13), `"exp"`, d, 2))
	// Refused Creates left nothing to claim.
	got := ids(claim(t, st, d.Add(time.Minute), 100))
	slices.Sort(got)
	if want := []string{sid(2), sid(4), sid(7), sid(10), sid(11)}; !slices.Equal(got, want) {
		t.Errorf("Claim of everything = %v, want %v (no refused session)", got, want)
	}
}

func testConcurrentCreatesLimit(t *testing.T, st Store) {
	d := base()
	const rounds, racers, limit = 3, 50, 2
	for r := range rounds {
		uid := fmt.Sprintf(`"racer%d"`, r)
		sock := "user_socket:racer" + fmt.Sprint(r)
		var mu sync.Mutex
		var won []string
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range racers {
			id := sid(1000*r + i)
			wg.Go(func() {
				<-start
				err := createLimited(st, id, uid, d, limit)
				switch {
				case err == nil:
					mu.Lock()
					won = append(won, id)
					mu.Unlock()
				case errors.Is(err, gateway.ErrTooManySessions):
				default:
					t.Errorf("Create(%s): %v", id, err)
				}
			})
		}
		close(start)
		wg.Wait()
		slices.Sort(won)
		if len(won) != limit {
			t.Fatalf("round %d: %d of %d racing Creates under a limit of %d succeeded, want exactly %d", r, len(won), racers, limit, limit)
		}
		if got := bySocket(t, st, sock); !slices.Equal(got, won) {
			t.Errorf("round %d: BySocket = %v, want the winners %v", r, got, won)
		}
		for i := range racers {
			if id := sid(1000*r + i); !slices.Contains(won, id) {
				if _, err := st.Load(t.Context(), id); !errors.Is(err, gateway.ErrNoSession) {
					t.Errorf("round %d: refused session %s: Load = %v, want ErrNoSession", r, id, err)
				}
			}
		}
	}
	if got := claim(t, st, d.Add(time.Minute), 1000); len(got) != rounds*limit {
		t.Errorf("Claim of everything = %d sessions, want %d: refused Creates left sessions behind", len(got), rounds*limit)
	}
}

// --- copies ---

func testValuesAreCopies(t *testing.T, st Store) {
	d := base()
	orig := fullSession(sid(1), `42`)
	in := fullSession(sid(1), `42`)
	create(t, st, in, d)
	// The caller keeps using its value after Create.
	in.Name = "changed after Create"
	in.Channels["sala:lobby"].Assigns["count"] = json.RawMessage(`1000`)
	in.RecentRefs[0] = "changed"
	wantSession(t, "Load after the caller changed its Create argument", orig, load(t, st, sid(1)))

	// Loaded values are the caller's own.
	got := load(t, st, sid(1))
	got.Name = "changed after Load"
	got.UserID[0] = '9'
	got.Channels["sala:lobby"].Assigns["count"][0] = '0'
	*got.Channels["sala:lobby"].JoinRef = "changed"
	got.Channels["sala:lobby"].Since = 1
	delete(got.Channels, "notificaciones:42")
	got.RecentRefs[0] = "changed"
	got.Outbox[0].Data[2] = 'X'
	wantSession(t, "Load after the caller changed a loaded value", orig, load(t, st, sid(1)))

	// The caller keeps using its value after Save.
	saved := load(t, st, sid(1))
	if err := st.Save(t.Context(), saved); err != nil {
		t.Fatalf("Save: %v", err)
	}
	saved.Name = "changed after Save"
	saved.Channels["sala:lobby"].Assigns["nick"] = json.RawMessage(`"x"`)
	saved.RecentRefs = nil
	wantSession(t, "Load after the caller changed its Save argument", orig, load(t, st, sid(1)))
}

// --- presence ---

func entry(owner, key string, at int64, meta string) gateway.PresenceEntry {
	return gateway.PresenceEntry{Key: key, Owner: owner, Meta: json.RawMessage(meta), At: at}
}

func put(t *testing.T, st Store, topic string, e gateway.PresenceEntry) *gateway.PresenceEntry {
	t.Helper()
	prev, err := st.PutPresence(t.Context(), topic, e)
	if err != nil {
		t.Fatalf("PutPresence(%q, %s/%s): %v", topic, e.Owner, e.Key, err)
	}
	return prev
}

func list(t *testing.T, st Store, topic string) []gateway.PresenceEntry {
	t.Helper()
	es, err := st.ListPresence(t.Context(), topic)
	if err != nil {
		t.Fatalf("ListPresence(%q): %v", topic, err)
	}
	return es
}

func entryEqual(a, b gateway.PresenceEntry) bool {
	return a.Key == b.Key && a.Owner == b.Owner && a.At == b.At && jsonEqual(a.Meta, b.Meta)
}

func entriesString(es []gateway.PresenceEntry) string {
	var b []byte
	b = append(b, '[')
	for i, e := range es {
		if i > 0 {
			b = append(b, ' ')
		}
		b = fmt.Appendf(b, "{%s %s @%d %s}", e.Owner, e.Key, e.At, e.Meta)
	}
	return string(append(b, ']'))
}

func wantEntries(t *testing.T, what string, got, want []gateway.PresenceEntry) {
	t.Helper()
	if !slices.EqualFunc(got, want, entryEqual) {
		t.Errorf("%s:\n got  %s\n want %s", what, entriesString(got), entriesString(want))
	}
}

func testPresencePutNew(t *testing.T, st Store) {
	e := entry("s1/0", "42", 100, `{"phx_ref":"F1","online_at":"1"}`)
	if prev := put(t, st, "sala:1", e); prev != nil {
		t.Errorf("PutPresence of a new entry returned prev %s, want nil", entriesString([]gateway.PresenceEntry{*prev}))
	}
	wantEntries(t, "ListPresence", list(t, st, "sala:1"), []gateway.PresenceEntry{e})
	// Same owner, another key; same key, another owner: both new entries.
	e2 := entry("s1/0", "43", 101, `{"phx_ref":"F2"}`)
	e3 := entry("s2/0", "42", 102, `{"phx_ref":"F3"}`)
	if prev := put(t, st, "sala:1", e2); prev != nil {
		t.Errorf("PutPresence of another key of the same owner returned a prev")
	}
	if prev := put(t, st, "sala:1", e3); prev != nil {
		t.Errorf("PutPresence of the same key by another owner returned a prev")
	}
	wantEntries(t, "ListPresence", list(t, st, "sala:1"), []gateway.PresenceEntry{e, e2, e3})
	if got := list(t, st, "sala:empty"); len(got) != 0 {
		t.Errorf("ListPresence of an unused topic = %s, want none", entriesString(got))
	}
}

func testPresencePutReplace(t *testing.T, st Store) {
	a := entry("s1/0", "42", 100, `{"phx_ref":"A1","status":"away"}`)
	b := entry("s2/0", "7", 200, `{"phx_ref":"B1"}`)
	c := entry("s3/1", "8", 300, `{"phx_ref":"C1"}`)
	put(t, st, "sala:1", a)
	put(t, st, "sala:1", b)
	put(t, st, "sala:1", c)

	// An update of a arrives later (a larger At): it keeps a's place.
	a2 := entry("s1/0", "42", 400, `{"phx_ref":"A2","phx_ref_prev":"A1","status":"online"}`)
	prev := put(t, st, "sala:1", a2)
	if prev == nil {
		t.Fatal("PutPresence of an existing entry returned nil prev")
	}
	if !entryEqual(*prev, a) {
		t.Errorf("prev = %s, want the replaced entry %s", entriesString([]gateway.PresenceEntry{*prev}), entriesString([]gateway.PresenceEntry{a}))
	}
	a2kept := a2
	a2kept.At = a.At
	wantEntries(t, "ListPresence after the update", list(t, st, "sala:1"), []gateway.PresenceEntry{a2kept, b, c})

	// A second update returns the first update (with the original place).
	a3 := entry("s1/0", "42", 500, `{"phx_ref":"A3"}`)
	prev = put(t, st, "sala:1", a3)
	if prev == nil || !entryEqual(*prev, a2kept) {
		t.Errorf("prev of the second update = %v, want %s", prev, entriesString([]gateway.PresenceEntry{a2kept}))
	}
	a3kept := a3
	a3kept.At = a.At
	wantEntries(t, "ListPresence after the second update", list(t, st, "sala:1"), []gateway.PresenceEntry{a3kept, b, c})

	// After a remove, the owner tracks anew: a new entry at its new place.
	if _, err := st.RemovePresence(t.Context(), "sala:1", "s1/0"); err != nil {
		t.Fatalf("RemovePresence: %v", err)
	}
	a4 := entry("s1/0", "42", 600, `{"phx_ref":"A4"}`)
	if prev := put(t, st, "sala:1", a4); prev != nil {
		t.Errorf("PutPresence after RemovePresence returned prev %v, want nil", *prev)
	}
	wantEntries(t, "ListPresence after re-tracking", list(t, st, "sala:1"), []gateway.PresenceEntry{b, c, a4})
}

func testPresenceListOrder(t *testing.T, st Store) {
	// By At, then Owner, then Key; put in a scrambled order.
	want := []gateway.PresenceEntry{
		entry("s9/0", "z", 50, `{"phx_ref":"1"}`),
		entry("s1/0", "a", 100, `{"phx_ref":"2"}`),
		entry("s1/0", "b", 100, `{"phx_ref":"3"}`),
		entry("s2/0", "a", 100, `{"phx_ref":"4"}`),
		entry("s1/0", "c", 150, `{"phx_ref":"5"}`),
		// Unix nanoseconds, as the gateway sets them: 1 ns apart, beyond the
		// precision of a float64 (a Lua number or a sorted-set score).
		entry("s9/0", "a", 1795700000000000001, `{"phx_ref":"6"}`),
		entry("s0/0", "a", 1795700000000000002, `{"phx_ref":"7"}`),
	}
	for _, i := range []int{4, 6, 2, 5, 0, 3, 1} {
		put(t, st, "sala:order", want[i])
	}
	wantEntries(t, "ListPresence", list(t, st, "sala:order"), want)
}

func testPresenceTopicsIsolated(t *testing.T, st Store) {
	x := entry("s1/0", "42", 100, `{"phx_ref":"X"}`)
	y := entry("s1/0", "42", 200, `{"phx_ref":"Y"}`)
	if prev := put(t, st, "sala:x", x); prev != nil {
		t.Errorf("first put in sala:x returned a prev")
	}
	if prev := put(t, st, "sala:y", y); prev != nil {
		t.Errorf("the same owner and key in another topic returned a prev")
	}
	put(t, st, "sala:xy", entry("s2/0", "1", 1, `{}`)) // a topic name that extends another
	wantEntries(t, "sala:x", list(t, st, "sala:x"), []gateway.PresenceEntry{x})
	wantEntries(t, "sala:y", list(t, st, "sala:y"), []gateway.PresenceEntry{y})
	removed, err := st.RemovePresence(t.Context(), "sala:x", "s1/0")
	if err != nil {
		t.Fatalf("RemovePresence: %v", err)
	}
	wantEntries(t, "RemovePresence(sala:x)", removed, []gateway.PresenceEntry{x})
	if got := list(t, st, "sala:x"); len(got) != 0 {
		t.Errorf("sala:x after RemovePresence = %s, want none", entriesString(got))
	}
	wantEntries(t, "sala:y after removing from sala:x", list(t, st, "sala:y"), []gateway.PresenceEntry{y})
	wantEntries(t, "sala:xy", list(t, st, "sala:xy"), []gateway.PresenceEntry{entry("s2/0", "1", 1, `{}`)})
}

func testPresenceRemoveOwner(t *testing.T, st Store) {
	const topic = "sala:rm"
	o1b := entry("s1/0", "k2", 50, `{"phx_ref":"1b"}`)
	o1a := entry("s1/0", "k1", 10, `{"phx_ref":"1a"}`)
	o2 := entry("s2/0", "k1", 20, `{"phx_ref":"2"}`)
	o1other := entry("s1/1", "k1", 30, `{"phx_ref":"1other"}`) // another channel of the same session
	for _, e := range []gateway.PresenceEntry{o1b, o1a, o2, o1other} {
		put(t, st, topic, e)
	}
	removed, err := st.RemovePresence(t.Context(), topic, "s1/0")
	if err != nil {
		t.Fatalf("RemovePresence: %v", err)
	}
	wantEntries(t, "RemovePresence(s1/0)", removed, []gateway.PresenceEntry{o1a, o1b})
	wantEntries(t, "ListPresence after the remove", list(t, st, topic), []gateway.PresenceEntry{o2, o1other})

	again, err := st.RemovePresence(t.Context(), topic, "s1/0")
	if err != nil || len(again) != 0 {
		t.Errorf("second RemovePresence = %s, %v; want none, no error", entriesString(again), err)
	}
	for _, c := range []struct{ topic, owner string }{{topic, "nobody"}, {"sala:unused", "s1/0"}, {topic, "s1"}} {
		got, err := st.RemovePresence(t.Context(), c.topic, c.owner)
		if err != nil || len(got) != 0 {
			t.Errorf("RemovePresence(%q, %q) = %s, %v; want none, no error", c.topic, c.owner, entriesString(got), err)
		}
	}
	wantEntries(t, "ListPresence at the end", list(t, st, topic), []gateway.PresenceEntry{o2, o1other})
}

func testPresenceConcurrentRemove(t *testing.T, st Store) {
	const rounds, racers, keys = 10, 6, 3
	for r := range rounds {
		topic := fmt.Sprintf("sala:race:%d", r)
		owner := fmt.Sprintf("s%d/0", r)
		for k := range keys {
			put(t, st, topic, entry(owner, fmt.Sprint(k), int64(k), `{}`))
		}
		put(t, st, topic, entry("bystander/0", "b", 1, `{}`))
		var mu sync.Mutex
		count := map[string]int{}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range racers {
			wg.Go(func() {
				<-start
				got, err := st.RemovePresence(context.Background(), topic, owner)
				if err != nil {
					t.Errorf("RemovePresence: %v", err)
					return
				}
				mu.Lock()
				for _, e := range got {
					count[e.Owner+"/"+e.Key]++
				}
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
		total := 0
		for k, n := range count {
			total += n
			if n != 1 {
				t.Errorf("round %d: entry %s returned by %d racing removes, want 1", r, k, n)
			}
		}
		if total != keys {
			t.Errorf("round %d: racing removes returned %d entries in all, want %d", r, total, keys)
		}
		wantEntries(t, "bystander after the race", list(t, st, topic), []gateway.PresenceEntry{entry("bystander/0", "b", 1, `{}`)})
	}
}
