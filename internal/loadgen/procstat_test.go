package loadgen

import (
	"os"
	"testing"
)

func TestParseProcFiles(t *testing.T) {
	// The command name may hold spaces and parentheses.
	stat := []byte("1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 8 0 12345 1000000 500\n")
	cpu, err := parseStatCPU(stat)
	if err != nil || cpu != 3.8 {
		t.Errorf("parseStatCPU = %v, %v; want 3.8 (380 ticks)", cpu, err)
	}
	if _, err := parseStatCPU([]byte("1234 (x) S 1")); err == nil {
		t.Error("a short stat line was accepted")
	}
	rss, err := parseVmRSS([]byte("Name:\tsluice\nVmPeak:\t  9 kB\nVmRSS:\t   2048 kB\nThreads: 4\n"))
	if err != nil || rss != 2048*1024 {
		t.Errorf("parseVmRSS = %d, %v", rss, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tkthread\n")); err == nil {
		t.Error("a status without VmRSS was accepted")
	}
}

func TestReadProcs(t *testing.T) {
	one, err := ReadProcs([]int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if one.RSSBytes <= 0 || one.CPUSeconds < 0 {
		t.Errorf("self: %+v", one)
	}
	two, err := ReadProcs([]int{0, os.Getpid()})
	if err != nil || two.RSSBytes < one.RSSBytes*3/2 {
		t.Errorf("two pids are not summed: %+v, %v", two, err)
	}
	if _, err := ReadProcs([]int{1 << 30}); err == nil {
		t.Error("a process that does not exist was read")
	}
}
