package token

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Erlang External Term Format tags (erts/emulator/beam/external.h).
const (
	etfVersion       = 131
	tagNewFloat      = 70
	tagSmallInt      = 97
	tagInt           = 98
	tagAtom          = 100
	tagSmallTuple    = 104
	tagLargeTuple    = 105
	tagNil           = 106
	tagString        = 107
	tagList          = 108
	tagBinary        = 109
	tagSmallBig      = 110
	tagLargeBig      = 111
	tagSmallAtom     = 115
	tagMap           = 116
	tagAtomUTF8      = 118
	tagSmallAtomUTF8 = 119
)

// maxDepth bounds container nesting on both encode and decode, so hostile
// input cannot exhaust the stack and cyclic Go values cannot loop forever.
const maxDepth = 32

// maxAtomChars is Erlang's limit on the length of an atom name.
const maxAtomChars = 255

// Atom is an Erlang atom that is not nil/true/false (those map to Go nil and bool).
type Atom string

// Tuple is a decoded Erlang tuple. Signing a Tuple encodes an Erlang tuple.
type Tuple []any

var errTooDeep = errors.New("term nested too deeply")

// appendTerm appends the ETF encoding of v (without the version byte) to b.
func appendTerm(b []byte, v any, depth int) ([]byte, error) {
	if depth > maxDepth {
		return nil, errTooDeep
	}
	switch v := v.(type) {
	case nil:
		return appendAtom(b, "nil")
	case bool:
		return appendAtom(b, strconv.FormatBool(v))
	case Atom:
		return appendAtom(b, string(v))
	case string:
		return appendBinary(b, v)
	case []byte:
		return appendBinary(b, string(v))
	case int:
		return appendInt(b, int64(v)), nil
	case int8:
		return appendInt(b, int64(v)), nil
	case int16:
		return appendInt(b, int64(v)), nil
	case int32:
		return appendInt(b, int64(v)), nil
	case int64:
		return appendInt(b, v), nil
	case uint:
		return appendUint(b, uint64(v)), nil
	case uint8:
		return appendInt(b, int64(v)), nil
	case uint16:
		return appendInt(b, int64(v)), nil
	case uint32:
		return appendInt(b, int64(v)), nil
	case uint64:
		return appendUint(b, v), nil
	case float32:
		return appendFloat(b, float64(v))
	case float64:
		return appendFloat(b, v)
	case Tuple:
		if len(v) <= math.MaxUint8 {
			b = append(b, tagSmallTuple, byte(len(v)))
		} else if uint64(len(v)) <= math.MaxUint32 {
			b = binary.BigEndian.AppendUint32(append(b, tagLargeTuple), uint32(len(v)))
		} else {
			return nil, errors.New("tuple too large")
		}
		return appendElems(b, v, depth)
	case []any:
		return appendList(b, v, depth)
	case []string:
		return appendList(b, v, depth)
	case map[string]any:
		return appendMap(b, v, depth)
	case map[string]string:
		return appendMap(b, v, depth)
	default:
		return nil, fmt.Errorf("unsupported type %T", v)
	}
}

func appendElems[V any](b []byte, s []V, depth int) ([]byte, error) {
	var err error
	for _, e := range s {
		if b, err = appendTerm(b, e, depth+1); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// appendList encodes a proper list; [] is NIL_EXT, as term_to_binary does.
func appendList[V any](b []byte, s []V, depth int) ([]byte, error) {
	if len(s) == 0 {
		return append(b, tagNil), nil
	}
	if uint64(len(s)) > math.MaxUint32 {
		return nil, errors.New("list too long")
	}
	b, err := appendElems(binary.BigEndian.AppendUint32(append(b, tagList), uint32(len(s))), s, depth)
	if err != nil {
		return nil, err
	}
	return append(b, tagNil), nil
}

// appendMap writes keys in Erlang term order (byte order for binaries), which
// is what term_to_binary produces for maps of up to 32 keys. Larger Erlang
// maps are emitted in hash order, which cannot be reproduced here; decoding
// is order-independent, so such tokens still verify both ways.
func appendMap[V any](b []byte, m map[string]V, depth int) ([]byte, error) {
	if uint64(len(m)) > math.MaxUint32 {
		return nil, errors.New("map too large")
	}
	b = binary.BigEndian.AppendUint32(append(b, tagMap), uint32(len(m)))
	var err error
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if b, err = appendBinary(b, k); err != nil {
			return nil, err
		}
		if b, err = appendTerm(b, m[k], depth+1); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func appendBinary(b []byte, s string) ([]byte, error) {
	if uint64(len(s)) > math.MaxUint32 {
		return nil, errors.New("binary too large")
	}
	return append(binary.BigEndian.AppendUint32(append(b, tagBinary), uint32(len(s))), s...), nil
}

func appendAtom(b []byte, name string) ([]byte, error) {
	if !utf8.ValidString(name) || utf8.RuneCountInString(name) > maxAtomChars {
		return nil, fmt.Errorf("invalid atom %q", name)
	}
	if len(name) <= math.MaxUint8 {
		return append(append(b, tagSmallAtomUTF8, byte(len(name))), name...), nil
	}
	return append(binary.BigEndian.AppendUint16(append(b, tagAtomUTF8), uint16(len(name))), name...), nil
}

func appendFloat(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, errors.New("non-finite float") // Erlang has no NaN/Inf
	}
	return binary.BigEndian.AppendUint64(append(b, tagNewFloat), math.Float64bits(f)), nil
}

// appendInt picks the smallest encoding, as term_to_binary does.
func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0 && v <= math.MaxUint8:
		return append(b, tagSmallInt, byte(v))
	case v >= math.MinInt32 && v <= math.MaxInt32:
		return binary.BigEndian.AppendUint32(append(b, tagInt), uint32(v))
	case v < 0:
		return appendBig(b, 1, uint64(-v)) // also right for MinInt64: uint64(-MinInt64) == 1<<63
	default:
		return appendBig(b, 0, uint64(v))
	}
}

func appendUint(b []byte, v uint64) []byte {
	if v <= math.MaxInt64 {
		return appendInt(b, int64(v))
	}
	return appendBig(b, 0, v)
}

// appendBig writes SMALL_BIG_EXT: byte count, sign, little-endian magnitude.
func appendBig(b []byte, sign byte, mag uint64) []byte {
	n := (bits.Len64(mag) + 7) / 8
	b = append(b, tagSmallBig, byte(n), sign)
	for i := 0; i < n; i++ {
		b = append(b, byte(mag>>(8*i)))
	}
	return b
}

// decodeTerm decodes a complete ETF binary (version byte included). Trailing
// bytes are rejected, like binary_to_term/1.
func decodeTerm(b []byte) (any, error) {
	if len(b) == 0 || b[0] != etfVersion {
		return nil, errors.New("missing ETF version byte")
	}
	d := decoder{b: b[1:]}
	v, err := d.term(0)
	if err != nil {
		return nil, err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%d trailing bytes", len(d.b))
	}
	return v, nil
}

type decoder struct{ b []byte }

var errShort = errors.New("truncated term")

func (d *decoder) take(n uint64) ([]byte, error) {
	if n > uint64(len(d.b)) {
		return nil, errShort
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p, nil
}

func (d *decoder) uint(size int) (uint64, error) {
	p, err := d.take(uint64(size))
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range p {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// count reads a size-byte element count and rejects counts that the rest of
// the input cannot hold (each element needs at least perElem bytes), so
// preallocation is bounded by the input size.
func (d *decoder) count(size int, perElem uint64) (int, error) {
	n, err := d.uint(size)
	if err != nil {
		return 0, err
	}
	if n*perElem > uint64(len(d.b)) { // n < 2^32 and perElem <= 2: no overflow
		return 0, errShort
	}
	return int(n), nil
}

func (d *decoder) term(depth int) (any, error) {
	if depth > maxDepth {
		return nil, errTooDeep
	}
	tag, err := d.uint(1)
	if err != nil {
		return nil, err
	}
	switch tag {
	case tagSmallInt:
		v, err := d.uint(1)
		return int64(v), err
	case tagInt:
		v, err := d.uint(4)
		return int64(int32(uint32(v))), err
	case tagSmallBig, tagLargeBig:
		size := 1
		if tag == tagLargeBig {
			size = 4
		}
		n, err := d.uint(size)
		if err != nil {
			return nil, err
		}
		return d.big(n)
	case tagNewFloat:
		v, err := d.uint(8)
		f := math.Float64frombits(v)
		if err == nil && (math.IsNaN(f) || math.IsInf(f, 0)) {
			err = errors.New("non-finite float")
		}
		return f, err
	case tagBinary:
		n, err := d.uint(4)
		if err != nil {
			return nil, err
		}
		p, err := d.take(n)
		return string(p), err
	case tagAtom, tagSmallAtom, tagAtomUTF8, tagSmallAtomUTF8:
		name, err := d.atom(tag)
		if err != nil {
			return nil, err
		}
		switch name {
		case "nil":
			return nil, nil
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return Atom(name), nil
	case tagSmallTuple, tagLargeTuple:
		size := 1
		if tag == tagLargeTuple {
			size = 4
		}
		n, err := d.count(size, 1)
		if err != nil {
			return nil, err
		}
		t := make(Tuple, n)
		return t, d.elems(t, depth)
	case tagNil:
		return []any{}, nil
	case tagString: // a list of bytes, e.g. an Elixir charlist
		n, err := d.uint(2)
		if err != nil {
			return nil, err
		}
		p, err := d.take(n)
		if err != nil {
			return nil, err
		}
		l := make([]any, len(p))
		for i, c := range p {
			l[i] = int64(c)
		}
		return l, nil
	case tagList:
		n, err := d.count(4, 1)
		if err != nil {
			return nil, err
		}
		l := make([]any, n)
		if err := d.elems(l, depth); err != nil {
			return nil, err
		}
		if tail, err := d.uint(1); err != nil || tail != tagNil {
			return nil, errors.New("improper list")
		}
		return l, nil
	case tagMap:
		return d.mapTerm(depth)
	default:
		return nil, fmt.Errorf("unsupported ETF tag %d", tag)
	}
}

func (d *decoder) elems(s []any, depth int) (err error) {
	for i := range s {
		if s[i], err = d.term(depth + 1); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) atom(tag uint64) (string, error) {
	size := 2
	if tag == tagSmallAtom || tag == tagSmallAtomUTF8 {
		size = 1
	}
	n, err := d.uint(size)
	if err != nil {
		return "", err
	}
	p, err := d.take(n)
	if err != nil {
		return "", err
	}
	name := string(p)
	if tag == tagAtom || tag == tagSmallAtom { // Latin-1
		r := make([]rune, len(p))
		for i, c := range p {
			r[i] = rune(c)
		}
		name = string(r)
	} else if !utf8.Valid(p) {
		return "", errors.New("atom is not valid UTF-8")
	}
	if utf8.RuneCountInString(name) > maxAtomChars {
		return "", errors.New("atom too long")
	}
	return name, nil
}

// big decodes a bignum's sign and little-endian magnitude into an int64.
func (d *decoder) big(n uint64) (any, error) {
	sign, err := d.uint(1)
	if err != nil {
		return nil, err
	}
	p, err := d.take(n)
	if err != nil {
		return nil, err
	}
	var mag uint64
	for i, c := range p {
		if c == 0 {
			continue
		}
		if i >= 8 {
			return nil, errors.New("integer overflows int64")
		}
		mag |= uint64(c) << (8 * i)
	}
	switch {
	case sign == 0 && mag <= math.MaxInt64:
		return int64(mag), nil
	case sign == 1 && mag <= 1<<63:
		return -int64(mag), nil // mag == 1<<63 wraps to MinInt64, as intended
	case sign > 1:
		return nil, errors.New("bad bignum sign")
	}
	return nil, errors.New("integer overflows int64")
}

// mapTerm decodes MAP_EXT whose keys are all binaries or atoms; atom keys
// become their names. A key present twice (including "a" and :a) is rejected.
func (d *decoder) mapTerm(depth int) (any, error) {
	n, err := d.count(4, 2)
	if err != nil {
		return nil, err
	}
	m := make(map[string]any, n)
	for range n {
		k, err := d.term(depth + 1)
		if err != nil {
			return nil, err
		}
		var key string
		switch k := k.(type) {
		case string:
			key = k
		case Atom:
			key = string(k)
		case nil:
			key = "nil"
		case bool:
			key = strconv.FormatBool(k)
		default:
			return nil, fmt.Errorf("unsupported map key type %T", k)
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("duplicate map key %q", key)
		}
		if m[key], err = d.term(depth + 1); err != nil {
			return nil, err
		}
	}
	return m, nil
}
