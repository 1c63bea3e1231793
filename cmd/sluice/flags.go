package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// lookupEnv reads the environment. Tests replace it (see TestMain) so that
// no SLUICE_* variable of the person running them changes what they test.
var lookupEnv = os.LookupEnv

// flagSet wraps flag.FlagSet so that every flag can also come from an
// environment variable, help shows both, and a mistake is reported in one
// line that says what to do instead of above the whole usage.
type flagSet struct {
	*flag.FlagSet
	name    string
	summary string
	envs    map[string]string // flag name → env var
	out     io.Writer
}

func newFlagSet(name, summary string, out io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), name: name, summary: summary, envs: map[string]string{}, out: out}
	// The flag package prints its errors and the usage itself; parse
	// reports errors its own way and prints the usage only on --help.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// printUsage writes the command's help: its summary, then every flag with
// its variable and default.
func (fs *flagSet) printUsage() {
	out := fs.out
	fmt.Fprintf(out, "Usage: sluice %s [flags]\n\n%s\n\nFlags (each may also be set by the environment variable shown; a flag wins over its variable):\n", fs.name, fs.summary)
	fs.VisitAll(func(f *flag.Flag) {
		env := ""
		if e := fs.envs[f.Name]; e != "" {
			env = " (env " + e + ")"
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(out, "  --%s%s%s\n      %s\n", f.Name, env, def, f.Usage)
	})
}

func (fs *flagSet) string(p *string, name, env, def, usage string) {
	fs.StringVar(p, name, def, usage)
	fs.envs[name] = env
}

func (fs *flagSet) duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	fs.Var((*durationValue)(p), name, usage)
	fs.envs[name] = env
}

func (fs *flagSet) boolean(p *bool, name, env string, def bool, usage string) {
	*p = def
	fs.Var((*boolValue)(p), name, usage)
	fs.envs[name] = env
}

func (fs *flagSet) float(p *float64, name, env string, def float64, usage string) {
	*p = def
	fs.Var((*floatValue)(p), name, usage)
	fs.envs[name] = env
}

func (fs *flagSet) int(p *int, name, env string, def int, usage string) {
	*p = def
	fs.Var((*intValue)(p), name, usage)
	fs.envs[name] = env
}

// parse applies the command line, then environment variables for flags not
// given on it. On --help it prints the usage and returns flag.ErrHelp; on
// a mistake it prints one line saying what is wrong (with the closest flag
// name for an unknown one) and returns errUsage.
func (fs *flagSet) parse(args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.printUsage()
			return err
		}
		return fs.usageError(fs.describe(err))
	}
	if fs.NArg() > 0 {
		return fs.usageError(fmt.Sprintf("unexpected argument %q (flags start with --)", fs.Arg(0)))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var msg string
	fs.VisitAll(func(f *flag.Flag) {
		env := fs.envs[f.Name]
		if env == "" || given[f.Name] || msg != "" {
			return
		}
		if v, ok := lookupEnv(env); ok {
			if e := f.Value.Set(strings.TrimSpace(v)); e != nil {
				msg = fmt.Sprintf("invalid value %q in %s (for --%s): %v", v, env, f.Name, e)
			}
		}
	})
	if msg != "" {
		return fs.usageError(msg)
	}
	return nil
}

// usageError prints msg and where to find the flags, and returns errUsage.
func (fs *flagSet) usageError(msg string) error {
	fmt.Fprintf(fs.out, "sluice %s: %s\nRun \"sluice %s --help\" to list its flags.\n", fs.name, msg, fs.name)
	return errUsage
}

var (
	undefinedFlag = regexp.MustCompile(`^flag provided but not defined: -+(.*)$`)
	invalidValue  = regexp.MustCompile(`^invalid (?:boolean )?value ("(?:[^"\\]|\\.)*") for (?:flag )?-+([^:]+): (.*)$`)
	missingValue  = regexp.MustCompile(`^flag needs an argument: -+(.*)$`)
)

// describe rewrites an error of the flag package in this tool's terms:
// flags spelled --name, and the closest flag named for an unknown one.
func (fs *flagSet) describe(err error) string {
	msg := err.Error()
	if m := undefinedFlag.FindStringSubmatch(msg); m != nil {
		name, _, _ := strings.Cut(m[1], "=")
		if near := fs.closest(name); near != "" {
			return fmt.Sprintf("unknown flag --%s (did you mean --%s?)", name, near)
		}
		return fmt.Sprintf("unknown flag --%s", name)
	}
	if m := invalidValue.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("invalid value %s for --%s: %s", m[1], m[2], m[3])
	}
	if m := missingValue.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("--%s needs a value", m[1])
	}
	return msg
}

// closest returns the defined flag name nearest to name by edit distance,
// or "" when none is near enough to be what was meant.
func (fs *flagSet) closest(name string) string {
	best, bestDist := "", -1
	fs.VisitAll(func(f *flag.Flag) {
		d := editDistance(name, f.Name)
		// A flag that the typed name extends or abbreviates is a likely
		// meaning (--redis-url for --redis, --heartbeat for --sse-heartbeat).
		if strings.HasPrefix(name, f.Name) || strings.HasSuffix(f.Name, name) {
			d = min(d, 2)
		}
		if bestDist < 0 || d < bestDist || (d == bestDist && f.Name < best) {
			best, bestDist = f.Name, d
		}
	})
	if bestDist < 0 || bestDist > max(2, len(name)/3) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// durationValue is a flag holding a Go duration ("15s", "24h", "1h30m"); a
// bare number is refused with an example, since a duration needs a unit.
type durationValue time.Duration

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return errors.New("expected a duration such as 24h, 90s or 1h30m; a number needs a unit (s, m, h)")
		}
		return errors.New("expected a duration such as 24h, 90s or 1h30m")
	}
	*d = durationValue(v)
	return nil
}

// String writes the duration without trailing zero units: 24h, not 24h0m0s.
func (d *durationValue) String() string { return formatDuration(time.Duration(*d)) }

// formatDuration is d.String() without trailing zero units.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// intValue is a flag holding a whole number.
type intValue int

func (i *intValue) Set(s string) error {
	v, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("expected a whole number")
	}
	*i = intValue(v)
	return nil
}

func (i *intValue) String() string { return strconv.Itoa(int(*i)) }

// floatValue is a flag holding a number.
type floatValue float64

func (f *floatValue) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return errors.New("expected a number")
	}
	*f = floatValue(v)
	return nil
}

func (f *floatValue) String() string { return strconv.FormatFloat(float64(*f), 'g', -1, 64) }

// boolValue is a flag holding true or false; --name alone means true.
type boolValue bool

func (b *boolValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("expected true or false")
	}
	*b = boolValue(v)
	return nil
}

func (b *boolValue) String() string { return strconv.FormatBool(bool(*b)) }

// IsBoolFlag lets --name stand for --name=true.
func (b *boolValue) IsBoolFlag() bool { return true }
