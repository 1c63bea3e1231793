package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// Linux fixes it at 100 for every architecture's user-space ABI, whatever
// the kernel's internal HZ, so it is not read with sysconf (which needs cgo).
const clockTicks = 100

// ProcSample is one reading of one or several processes (summed).
type ProcSample struct {
	At time.Time
	// RSSBytes is the resident set size (VmRSS).
	RSSBytes int64
	// CPUSeconds is user plus system CPU time since each process started.
	CPUSeconds float64
}

// ReadProcs reads /proc for each pid and sums them. pid 0 means this
// process.
func ReadProcs(pids []int) (ProcSample, error) {
	s := ProcSample{At: time.Now()}
	for _, pid := range pids {
		rss, cpu, err := readProc(pid)
		if err != nil {
			return s, err
		}
		s.RSSBytes += rss
		s.CPUSeconds += cpu
	}
	return s, nil
}

func procDir(pid int) string {
	if pid == 0 {
		return "/proc/self"
	}
	return "/proc/" + strconv.Itoa(pid)
}

// readProc reads VmRSS from status and utime+stime from stat.
func readProc(pid int) (rss int64, cpu float64, err error) {
	dir := procDir(pid)
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return 0, 0, fmt.Errorf("read process %d status: %w", pid, err)
	}
	if rss, err = parseVmRSS(status); err != nil {
		return 0, 0, fmt.Errorf("process %d: %w", pid, err)
	}
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read process %d stat: %w", pid, err)
	}
	if cpu, err = parseStatCPU(stat); err != nil {
		return 0, 0, fmt.Errorf("process %d: %w", pid, err)
	}
	return rss, cpu, nil
}

// parseVmRSS reads the "VmRSS:   1234 kB" line of /proc/<pid>/status.
func parseVmRSS(status []byte) (int64, error) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("unexpected VmRSS line %q", bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no VmRSS in status (a zombie or kernel thread?)")
}

// parseStatCPU returns utime+stime in seconds from /proc/<pid>/stat. The
// command name (field 2) is in parentheses and may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStatCPU(stat []byte) (float64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("malformed stat: no ')'")
	}
	// After ')': field 3 (state) is f[0]; utime is field 14, stime 15.
	f := bytes.Fields(stat[end+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed stat: %d fields after the command", len(f))
	}
	utime, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	stime, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed stat: utime %q stime %q", f[11], f[12])
	}
	return float64(utime+stime) / clockTicks, nil
}
