package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// flagSet wraps flag.FlagSet so that every flag can also come from an
// environment variable, and help shows both.
type flagSet struct {
	*flag.FlagSet
	envs map[string]string // flag name → env var
	out  io.Writer
}

func newFlagSet(name, summary string, out io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), envs: map[string]string{}, out: out}
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: sluice %s [flags]\n\n%s\n\nFlags (each may also be set by the environment variable shown; a flag wins over its variable):\n", name, summary)
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
	return fs
}

func (fs *flagSet) string(p *string, name, env, def, usage string) {
	fs.StringVar(p, name, def, usage)
	fs.envs[name] = env
}

func (fs *flagSet) duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	fs.DurationVar(p, name, def, usage)
	fs.envs[name] = env
}

func (fs *flagSet) boolean(p *bool, name, env string, def bool, usage string) {
	fs.BoolVar(p, name, def, usage)
	fs.envs[name] = env
}

func (fs *flagSet) float(p *float64, name, env string, def float64, usage string) {
	fs.Float64Var(p, name, def, usage)
	fs.envs[name] = env
}

func (fs *flagSet) int(p *int, name, env string, def int, usage string) {
	fs.IntVar(p, name, def, usage)
	fs.envs[name] = env
}

// parse applies environment variables for flags not given on the command
// line, then the command line.
func (fs *flagSet) parse(args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := fs.envs[f.Name]
		if env == "" || given[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(env); ok {
			if e := f.Value.Set(strings.TrimSpace(v)); e != nil {
				err = fmt.Errorf("environment variable %s=%q: %w", env, v, e)
			}
		}
	})
	return err
}
