package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	prevHi := uint64(0)
	for idx := range histBuckets {
		lo, hi := bucketBounds(idx)
		if idx > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, the previous ended at %d", idx, lo, prevHi)
		}
		if bucketOf(lo) != idx || bucketOf(hi) != idx {
			t.Fatalf("bucket %d = [%d, %d], but bucketOf gives %d and %d", idx, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		prevHi = hi
	}
}

func TestHistogramPercentiles(t *testing.T) {
	var h Histogram
	// 1..1000 ms: p50 500 ms, p90 900, p99 990, max 1000.
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.9, 900 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.Percentile(c.q)
		if got < c.want || float64(got-c.want) > float64(c.want)/64 {
			t.Errorf("p%g = %v, want %v (within 1/64 above)", c.q*100, got, c.want)
		}
	}
	if h.Max() != time.Second || h.Min() != time.Millisecond || h.Count() != 1000 {
		t.Errorf("max %v min %v count %d", h.Max(), h.Min(), h.Count())
	}
	if m := h.Mean(); m < 500*time.Millisecond || m > 501*time.Millisecond {
		t.Errorf("mean %v", m)
	}
}

func TestHistogramRandomAgainstExact(t *testing.T) {
	var h Histogram
	r := rand.New(rand.NewPCG(3, 4))
	vals := make([]time.Duration, 50000)
	var wg sync.WaitGroup
	for i := range vals {
		// Log-uniform from 1 µs to ~10 s.
		vals[i] = time.Duration(float64(time.Microsecond) * math.Pow(10, r.Float64()*7))
	}
	for part := range 4 {
		wg.Go(func() {
			for _, v := range vals[part*len(vals)/4 : (part+1)*len(vals)/4] {
				h.Record(v)
			}
		})
	}
	wg.Wait()
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(q*float64(len(vals)))-1].Truncate(time.Microsecond)
		got := h.Percentile(q)
		if got < exact || float64(got-exact) > float64(exact)/64+float64(time.Microsecond) {
			t.Errorf("p%g = %v, exact %v", q*100, got, exact)
		}
	}
	h.Record(-time.Second)
	if h.Min() != 0 {
		t.Errorf("a negative duration was not recorded as 0: min %v", h.Min())
	}
}
