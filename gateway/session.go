package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrNoSession is returned for a session that does not exist: never created,
// expired, or disconnected.
var ErrNoSession = errors.New("unknown or expired session")

// Session is the state of one client connection (one phoenix.js Socket),
// kept in a SessionStore so that any instance can serve its next request.
type Session struct {
	ID string `json:"id"`
	// UserID is the user id as the token carried it: a JSON number or string.
	UserID json.RawMessage `json:"uid"`
	// Name is the user's display name from the token, if it had one.
	Name string `json:"name,omitempty"`
	// Vsn is the negotiated serializer version.
	Vsn string `json:"vsn"`
	// Channels holds the joined channels by topic.
	Channels map[string]*ChannelState `json:"ch,omitempty"`
	// NextSlot numbers the channels joined by this session; a slot is never
	// reused, so a cursor for a left channel never applies to a later join.
	NextSlot int `json:"slot"`
	// RecentRefs remembers the refs of the latest handled messages, so that a
	// replayed POST is not applied twice. It is bounded in count and in bytes
	// (see rememberRef).
	RecentRefs []string  `json:"refs,omitempty"`
	CreatedAt  time.Time `json:"at"`
	// Outbox holds what the last handled batch sent (replies, pushes,
	// broadcasts) while it is not known to be published: it is saved with
	// the batch's refs and state, then published and cleared. See
	// Gateway.Handle.
	Outbox []PendingRecord `json:"out,omitempty"`

	// assigned is set when a handler assigned something while handling a
	// batch: subscriptions holding the session must reload it.
	assigned bool
	// refsSize is the JSON size of RecentRefs, once refsSized.
	refsSize  int
	refsSized bool
}

// PendingRecord is a broker record that a handled batch made and that is
// not known to be published yet.
type PendingRecord struct {
	// Topic is the broker topic: a session's mailbox or a client topic's log.
	Topic string `json:"t"`
	// Data is the record as the gateway stores it in the broker (JSON).
	Data json.RawMessage `json:"d"`
}

// decodeSession decodes a session stored as JSON (by the Redis store).
func decodeSession(data []byte) (*Session, error) {
	s := &Session{}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("decode session: %w", err)
	}
	return s, nil
}

// clone returns a deep copy of s: nothing of it is shared with s but
// immutable strings. Every field of Session and ChannelState must be
// copied here (TestSessionCloneIsDeep checks them against a JSON round trip).
func (s *Session) clone() *Session {
	c := *s
	c.UserID = slices.Clone(s.UserID)
	c.RecentRefs = slices.Clone(s.RecentRefs)
	if s.Outbox != nil {
		c.Outbox = make([]PendingRecord, len(s.Outbox))
		for i, r := range s.Outbox {
			c.Outbox[i] = PendingRecord{Topic: r.Topic, Data: slices.Clone(r.Data)}
		}
	}
	if s.Channels != nil {
		c.Channels = make(map[string]*ChannelState, len(s.Channels))
		for t, ch := range s.Channels {
			cc := *ch
			if ch.JoinRef != nil {
				ref := *ch.JoinRef
				cc.JoinRef = &ref
			}
			if ch.Assigns != nil {
				cc.Assigns = make(map[string]json.RawMessage, len(ch.Assigns))
				for k, v := range ch.Assigns {
					cc.Assigns[k] = slices.Clone(v)
				}
			}
			c.Channels[t] = &cc
		}
	}
	c.assigned = false
	c.refsSize, c.refsSized = 0, false
	return &c
}

// ChannelState is one joined channel of a session.
type ChannelState struct {
	Topic   string  `json:"t"`
	JoinRef *string `json:"j"`
	// Slot identifies this join within the session (see Session.NextSlot).
	Slot int `json:"s"`
	// Since is the topic's head when the join completed: the session receives
	// the topic's records after it.
	Since uint64 `json:"c"`
	// Assigns is the channel's state kept by its handler between messages.
	Assigns map[string]json.RawMessage `json:"a,omitempty"`
}

// UserKey returns the user id as a string: the presence key and the suffix of
// the socket id.
func (s *Session) UserKey() string { return userKey(s.UserID) }

func userKey(raw json.RawMessage) string {
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return str
	}
	return string(raw)
}

// SocketID is the Phoenix socket id, "user_socket:<user id>".
func (s *Session) SocketID() string { return "user_socket:" + s.UserKey() }

// owner identifies a channel of a session in presence entries and in
// broadcast_from exclusions.
func owner(sessionID string, slot int) string { return sessionID + "/" + strconv.Itoa(slot) }

// MailboxTopicPrefix starts the broker topic of every session's mailbox: the
// log of its own frames (replies and pushes), which its client reads. Give
// the broker a topics.ByteBudget for it, so that a session whose client
// sends and never reads keeps a bounded number of bytes, not --history
// records of up to MaxPayloadBytes each. Client topics live under "t:" so
// they can never reach it.
const MailboxTopicPrefix = "m:"

// mailboxTopic is the broker log of a session's own frames.
func mailboxTopic(sessionID string) string { return MailboxTopicPrefix + sessionID }

// channelTopic is the broker log of a client topic.
func channelTopic(topic string) string { return "t:" + topic }

// newSessionID returns 128 random bits in hex.
func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validSessionID reports whether id has the shape newSessionID makes.
func validSessionID(id string) bool {
	return len(id) == 32 && isLowerHex(id)
}

// rememberRef records key (topic+"\x00"+ref) as handled and reports whether
// it already was. It keeps the latest keys, at most limit of them and at most
// maxRecentRefsBytes of JSON.
func (s *Session) rememberRef(key string, limit int) (seen bool) {
	if slices.Contains(s.RecentRefs, key) {
		return true
	}
	if !s.refsSized {
		s.refsSize = 0
		for _, r := range s.RecentRefs {
			s.refsSize += jsonStringSize(r) + 1
		}
		s.refsSized = true
	}
	s.RecentRefs = append(s.RecentRefs, key)
	s.refsSize += jsonStringSize(key) + 1
	drop := 0
	for len(s.RecentRefs)-drop > limit || s.refsSize > maxRecentRefsBytes {
		s.refsSize -= jsonStringSize(s.RecentRefs[drop]) + 1
		drop++
	}
	if drop > 0 {
		s.RecentRefs = append([]string(nil), s.RecentRefs[drop:]...)
	}
	return false
}

// SessionStore keeps sessions. Implementations: MemoryStore, and the Redis
// store. Both pass the conformance suite in gateway/storetest.
type SessionStore interface {
	// Create stores a new session that expires at deadline unless touched.
	// With maxPerSocket > 0 it stores it only if the session's socket id has
	// fewer than maxPerSocket live sessions (created, not removed, deadline
	// not passed), checked atomically with the insertion so that concurrent
	// Creates cannot exceed the limit together; otherwise it stores nothing
	// and returns an error wrapping ErrTooManySessions.
	Create(ctx context.Context, s *Session, deadline time.Time, maxPerSocket int) error
	// Load returns the session or ErrNoSession.
	Load(ctx context.Context, id string) (*Session, error)
	// Save replaces a session that still exists; it returns ErrNoSession if the
	// session expired or was deleted meanwhile, and never revives it.
	Save(ctx context.Context, s *Session) error
	// Touch moves the session's expiry deadline and returns the session (a
	// poll needs both: one round trip); ErrNoSession if it is gone.
	Touch(ctx context.Context, id string, deadline time.Time) (*Session, error)
	// TouchMany moves the expiry deadline of every listed session that
	// still exists to deadline, in one round trip however many there are
	// (the keeper of an instance's held streams calls it for them all), and
	// returns the ids that are gone. Like Touch, it never revives a removed
	// session.
	//
	// A store may keep a session's data only a bounded grace past the
	// deadline it was last given by Create, Touch or a TouchMany with renew
	// (RedisStore: a day); without renew, TouchMany only moves deadlines,
	// which may cost the store far less (RedisStore: two commands for the
	// whole batch instead of two per session). A caller that keeps moving a
	// session's deadline therefore renews it well within that grace. A
	// session removed (Remove) or never created is reported gone either
	// way; one whose data alone vanished may be reported only by a renewal.
	TouchMany(ctx context.Context, ids []string, deadline time.Time, renew bool) (gone []string, err error)
	// Lock serializes the handling of one session's messages across
	// instances. It waits up to ctx's deadline; unlock releases it.
	Lock(ctx context.Context, id string) (unlock func(), err error)
	// LockLoad is Lock then Load, in one round trip per attempt (a batch's
	// handling starts with both): it returns the session as it is under
	// the lock. If the session is gone it returns ErrNoSession, holding no
	// lock.
	LockLoad(ctx context.Context, id string) (unlock func(), s *Session, err error)
	// Claim returns up to limit sessions whose deadline is not after now,
	// and moves each one's deadline to now+lease so that no other Claim
	// returns it meanwhile. The claimer ends each session and Removes it; if
	// it dies first, the session is claimed again once the lease passes.
	Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]*Session, error)
	// Remove deletes the session and returns it; ErrNoSession if another
	// caller removed it first (so its departure is announced exactly once).
	Remove(ctx context.Context, id string) (*Session, error)
	// BySocket lists the ids of the live sessions of a socket id.
	BySocket(ctx context.Context, socketID string) ([]string, error)
}

// Cursor is a client's delivery position: the last record it received from
// its session's mailbox and from each joined channel's topic (by slot).
type Cursor struct {
	Mailbox uint64
	Slots   map[int]uint64
}

// SessionToken is what a transport hands to its client to resume a session:
// the session id, optionally its key, and the delivery cursor,
// "<id>[<key>].<mailbox>[.<slot>-<seq>...]". Because the cursor travels with
// the client, a retried poll after a lost response is answered from the same
// position, on any instance.
//
// Without a key it is public (an SSE event id) and proves nothing; with its
// key (a LongPoll token) it is the session's credential (see VerifySession).
type SessionToken struct {
	SessionID string
	// Key is the session's key (see Gateway.SessionKey), or empty.
	Key    string
	Cursor Cursor
}

// String encodes the token.
func (t SessionToken) String() string { return string(t.AppendText(nil)) }

// AppendText appends the token as String writes it to b (encoding.TextAppender):
// a stream writes each event's id without allocating for it.
func (t SessionToken) AppendText(b []byte) []byte {
	b = append(b, t.SessionID...)
	b = append(b, t.Key...)
	b = append(b, '.')
	b = strconv.AppendUint(b, t.Cursor.Mailbox, 10)
	for slot, seq := range sortedSlots(t.Cursor.Slots) {
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(slot), 10)
		b = append(b, '-')
		b = strconv.AppendUint(b, seq, 10)
	}
	return b
}

// ParseSessionToken decodes a token made by SessionToken.String. It checks
// the shape only: a key it carries is checked by Gateway.VerifySession.
func ParseSessionToken(s string) (SessionToken, bool) {
	if len(s) > maxSessionTokenLen {
		return SessionToken{}, false
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 2+maxChannelsHardLimit {
		return SessionToken{}, false
	}
	var t SessionToken
	switch id := parts[0]; {
	case validSessionID(id):
		t.SessionID = id
	case len(id) == 32+sessionKeyLen && validSessionID(id[:32]) && isLowerHex(id[32:]):
		t.SessionID, t.Key = id[:32], id[32:]
	default:
		return SessionToken{}, false
	}
	var err error
	if t.Cursor.Mailbox, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return SessionToken{}, false
	}
	for _, p := range parts[2:] {
		slotS, seqS, ok := strings.Cut(p, "-")
		slot, err1 := strconv.Atoi(slotS)
		seq, err2 := strconv.ParseUint(seqS, 10, 64)
		if !ok || err1 != nil || err2 != nil || slot < 0 {
			return SessionToken{}, false
		}
		if t.Cursor.Slots == nil {
			t.Cursor.Slots = make(map[int]uint64)
		}
		t.Cursor.Slots[slot] = seq
	}
	return t, true
}

// maxSessionTokenLen bounds the tokens worth parsing: an id with its key and
// a cursor for every one of maxChannelsHardLimit slots.
const maxSessionTokenLen = 64 + 21 + maxChannelsHardLimit*(1+10+1+20)

// isLowerHex reports whether s is all lowercase hex digits, as hex.EncodeToString writes.
func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// maxChannelsHardLimit bounds the slots a token may carry, whatever the
// configured channel limit, so parsing stays cheap on hostile input.
const maxChannelsHardLimit = 1000
