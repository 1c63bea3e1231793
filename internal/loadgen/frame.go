package loadgen

import (
	"errors"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a small JSON scanner for what the load generator reads on
// every message: V2 frames, their payloads and LongPoll envelopes. It works
// on byte slices in place and allocates nothing, so that tens of thousands of
// clients receiving thousands of messages a second stay cheap. It validates
// the structure it walks; anything it cannot read is an error, counted by
// the caller as a "bad_frame", never a panic.

// errBadJSON is wrapped by every scanner error.
var errBadJSON = errors.New("malformed JSON")

func badJSON(what string, i int) error {
	return fmt.Errorf("%w: %s at byte %d", errBadJSON, what, i)
}

// maxDepth bounds nesting so that hostile input cannot blow the stack.
const maxDepth = 64

// skipWS returns the index of the first non-space byte at or after i.
func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString reads the JSON string starting at b[i] (which must be '"').
// It returns the raw content between the quotes (escapes left as they are),
// whether it holds escapes, and the index after the closing quote.
func scanString(b []byte, i int) (raw []byte, escaped bool, next int, err error) {
	if i >= len(b) || b[i] != '"' {
		return nil, false, i, badJSON("expected a string", i)
	}
	start := i + 1
	for j := start; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[start:j], escaped, j + 1, nil
		case c == '\\':
			escaped = true
			j++ // skip the escaped byte; \uXXXX's digits are plain bytes
			if j >= len(b) {
				return nil, false, j, badJSON("unterminated escape", j)
			}
		case c < 0x20:
			return nil, false, j, badJSON("control character in string", j)
		}
	}
	return nil, false, len(b), badJSON("unterminated string", start-1)
}

// skipValue returns the index after the JSON value starting at b[i].
func skipValue(b []byte, i, depth int) (int, error) {
	if depth > maxDepth {
		return i, badJSON("nesting too deep", i)
	}
	i = skipWS(b, i)
	if i >= len(b) {
		return i, badJSON("expected a value", i)
	}
	switch c := b[i]; {
	case c == '"':
		_, _, next, err := scanString(b, i)
		return next, err
	case c == '{':
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1, nil
		}
		for {
			var err error
			if _, _, i, err = scanString(b, skipWS(b, i)); err != nil {
				return i, err
			}
			i = skipWS(b, i)
			if i >= len(b) || b[i] != ':' {
				return i, badJSON("expected ':'", i)
			}
			if i, err = skipValue(b, i+1, depth+1); err != nil {
				return i, err
			}
			i = skipWS(b, i)
			switch {
			case i < len(b) && b[i] == ',':
				i++
			case i < len(b) && b[i] == '}':
				return i + 1, nil
			default:
				return i, badJSON("expected ',' or '}'", i)
			}
		}
	case c == '[':
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1, nil
		}
		for {
			var err error
			if i, err = skipValue(b, i, depth+1); err != nil {
				return i, err
			}
			i = skipWS(b, i)
			switch {
			case i < len(b) && b[i] == ',':
				i++
			case i < len(b) && b[i] == ']':
				return i + 1, nil
			default:
				return i, badJSON("expected ',' or ']'", i)
			}
		}
	case c == '-' || c >= '0' && c <= '9':
		j := i + 1
		for j < len(b) && (b[j] >= '0' && b[j] <= '9' || b[j] == '.' || b[j] == 'e' || b[j] == 'E' || b[j] == '+' || b[j] == '-') {
			j++
		}
		return j, nil
	default:
		for _, lit := range [...]string{"true", "false", "null"} {
			if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
				return i + len(lit), nil
			}
		}
		return i, badJSON("unexpected byte", i)
	}
}

// frame is a V2 frame [join_ref, ref, topic, event, payload], its parts
// pointing into the data it was parsed from. A null join_ref or ref is nil;
// strings are raw (a string with escapes is kept escaped, which is fine for
// what the load generator compares: its own topics, events and refs).
type frame struct {
	joinRef, ref, topic, event []byte
	payload                    []byte // the raw JSON value
}

// parseFrame reads one V2 frame.
func parseFrame(b []byte) (frame, error) {
	var f frame
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '[' {
		return f, badJSON("a frame must be a JSON array", i)
	}
	i++
	for n := 0; n < 5; n++ {
		i = skipWS(b, i)
		if n > 0 {
			if i >= len(b) || b[i] != ',' {
				return f, badJSON("a frame must have 5 elements", i)
			}
			i = skipWS(b, i+1)
		}
		if n == 4 {
			end, err := skipValue(b, i, 0)
			if err != nil {
				return f, err
			}
			if b[i] != '{' {
				return f, badJSON("the payload must be an object", i)
			}
			f.payload = b[i:end]
			i = end
			continue
		}
		var s []byte
		if len(b)-i >= 4 && string(b[i:i+4]) == "null" {
			if n >= 2 {
				return f, badJSON("topic and event must be strings", i)
			}
			i += 4
		} else {
			var err error
			if s, _, i, err = scanString(b, i); err != nil {
				return f, err
			}
		}
		switch n {
		case 0:
			f.joinRef = s
		case 1:
			f.ref = s
		case 2:
			f.topic = s
		case 3:
			f.event = s
		}
	}
	// Extra elements are allowed (Phoenix ignores them); the array must close.
	for {
		i = skipWS(b, i)
		switch {
		case i < len(b) && b[i] == ']':
			if skipWS(b, i+1) != len(b) {
				return f, badJSON("data after the frame", i+1)
			}
			return f, nil
		case i < len(b) && b[i] == ',':
			var err error
			if i, err = skipValue(b, i+1, 0); err != nil {
				return f, err
			}
		default:
			return f, badJSON("expected ',' or ']'", i)
		}
	}
}

// objectFields walks the JSON object obj and stores in vals[k] the raw
// value of the member named keys[k], for the keys it finds (others are left
// nil). Strings are returned with their quotes.
func objectFields(obj []byte, keys []string, vals [][]byte) error {
	return objectMembers(obj, func(key, val []byte) {
		for k, want := range keys {
			if string(key) == want {
				vals[k] = val
			}
		}
	})
}

// objectMembers walks the JSON object obj and calls visit with each
// member's raw key (without quotes) and raw value (strings with their
// quotes), in order. It stops at the first malformed member.
func objectMembers(obj []byte, visit func(key, val []byte)) error {
	i := skipWS(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return badJSON("expected an object", i)
	}
	i = skipWS(obj, i+1)
	if i < len(obj) && obj[i] == '}' {
		return nil
	}
	for {
		key, _, next, err := scanString(obj, skipWS(obj, i))
		if err != nil {
			return err
		}
		i = skipWS(obj, next)
		if i >= len(obj) || obj[i] != ':' {
			return badJSON("expected ':'", i)
		}
		start := skipWS(obj, i+1)
		end, err := skipValue(obj, start, 1)
		if err != nil {
			return err
		}
		visit(key, obj[start:end])
		i = skipWS(obj, end)
		switch {
		case i < len(obj) && obj[i] == ',':
			i++
		case i < len(obj) && obj[i] == '}':
			return nil
		default:
			return badJSON("expected ',' or '}'", i)
		}
	}
}

// parseInt reads a JSON integer (no fraction, no exponent).
func parseInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg, b = true, b[1:]
	}
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if n < 0 { // overflow
		return 0, false
	}
	if neg {
		n = -n
	}
	return n, true
}

// unquote returns the content of a JSON string value without escapes, or
// ok=false if it is not a string or holds escapes (callers compare it with
// plain ASCII values).
func unquote(v []byte) ([]byte, bool) {
	raw, escaped, next, err := scanString(v, 0)
	if err != nil || escaped || next != len(v) {
		return nil, false
	}
	return raw, true
}

// appendUnescaped appends the decoded content of a raw JSON string (as
// scanString returns it) to dst.
func appendUnescaped(dst, raw []byte) ([]byte, error) {
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		i++
		if i >= len(raw) {
			return dst, badJSON("unterminated escape", i)
		}
		switch raw[i] {
		case '"', '\\', '/':
			dst = append(dst, raw[i])
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, ok := hex4(raw, i+1)
			if !ok {
				return dst, badJSON("bad \\u escape", i)
			}
			i += 4
			if utf16.IsSurrogate(r) {
				if r2, ok := hex4(raw, i+3); ok && i+2 < len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
					if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
						r = d
						i += 6
					}
				}
			}
			dst = utf8.AppendRune(dst, r)
		default:
			return dst, badJSON("bad escape", i)
		}
	}
	return dst, nil
}

// hex4 reads four hex digits at raw[i:i+4].
func hex4(raw []byte, i int) (rune, bool) {
	if i < 0 || i+4 > len(raw) {
		return 0, false
	}
	var r rune
	for _, c := range raw[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
