package loadgen

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram records durations in log-linear buckets, as an HDR histogram
// does: values under 128 µs are exact to the microsecond, and above that each
// power of two is split into 64 buckets, so a reported percentile is within
// 1/64 (1.6%) of the true value, from a microsecond to days, in 19 KB.
// Record is lock-free and safe for concurrent use by every client.
type Histogram struct {
	buckets [histBuckets]atomic.Uint64
	count   atomic.Uint64
	sum     atomic.Uint64 // microseconds
	max     atomic.Uint64 // microseconds
	min     atomic.Uint64 // microseconds + 1; 0 means none yet
}

const (
	subBits     = 6
	subCount    = 1 << subBits // buckets per power of two
	linearLimit = 2 * subCount // values below are their own bucket
	maxShift    = 40           // 2^(40+7) µs: far beyond any run
	histBuckets = linearLimit + maxShift*subCount
)

// bucketOf returns the bucket index of v microseconds.
func bucketOf(v uint64) int {
	if v < linearLimit {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1)
	if shift > maxShift {
		return histBuckets - 1
	}
	return linearLimit + (shift-1)*subCount + int(v>>uint(shift)) - subCount
}

// bucketBounds returns the lowest and highest value of bucket idx.
func bucketBounds(idx int) (lo, hi uint64) {
	if idx < linearLimit {
		return uint64(idx), uint64(idx)
	}
	shift := uint((idx-linearLimit)/subCount + 1)
	m := uint64((idx-linearLimit)%subCount + subCount)
	return m << shift, (m+1)<<shift - 1
}

// Record adds one duration; negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	h.buckets[bucketOf(us)].Add(1)
	h.count.Add(1)
	h.sum.Add(us)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			break
		}
	}
	for {
		m := h.min.Load()
		if m != 0 && us+1 >= m || h.min.CompareAndSwap(m, us+1) {
			break
		}
	}
}

// Count returns how many durations were recorded.
func (h *Histogram) Count() uint64 { return h.count.Load() }

// Max returns the largest duration recorded.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) * time.Microsecond }

// Min returns the smallest duration recorded.
func (h *Histogram) Min() time.Duration {
	m := h.min.Load()
	if m == 0 {
		return 0
	}
	return time.Duration(m-1) * time.Microsecond
}

// Mean returns the mean duration.
func (h *Histogram) Mean() time.Duration {
	n := h.count.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load()/n) * time.Microsecond
}

// Percentile returns the duration under which a fraction q (0 to 1) of the
// recorded durations fall: the highest value of the bucket holding that
// rank, capped at the maximum recorded.
func (h *Histogram) Percentile(q float64) time.Duration {
	n := h.count.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		if seen >= rank {
			_, hi := bucketBounds(i)
			return time.Duration(min(hi, h.max.Load())) * time.Microsecond
		}
	}
	return h.Max()
}
