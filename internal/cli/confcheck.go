package cli

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/gosec-ipsec/gosec/internal/conf"
)

// ConfCheck runs `gosec conf check`: it loads ipsec.conf and
// ipsec.secrets, prints every problem as file:line: message, with --dump
// each resolved conn, then a summary: the conns loaded, those skipped and
// why. It exits 0 when everything loads (warnings allowed), 1 when the
// files have errors and 3 when they are valid but some conns were skipped
// for a feature gosec lacks (gosec start then runs the others).
func ConfCheck(env Env, args []string) int {
	fs := flag.NewFlagSet("gosec conf check", flag.ContinueOnError)
	var cf ConfigFlags
	cf.Register(fs)
	dump := fs.Bool("dump", false, "print each resolved conn")
	asJSON := fs.Bool("json", false, "print diagnostics and resolved conns as JSON (schema in the README)")
	pos, ok := parse(env, fs, args)
	if !ok {
		return 2
	}
	if len(pos) != 0 {
		fmt.Fprintln(env.Stderr, "usage: gosec conf check [--config FILE] [--secrets FILE] [--dump] [--json]")
		return 2
	}
	cf.Resolve()
	cfg, err := conf.Load(cf.Config, conf.Options{})
	failed := err != nil
	sec, serr := loadSecretsFor(cfg, cf.Secrets)
	if *asJSON {
		if serr != nil && sec == nil {
			sec = &conf.Secrets{Diags: conf.Diags{{File: cf.Secrets, Msg: serr.Error()}}}
		}
		writeConfCheckJSON(env.Stdout, cf.Config, cf.Secrets, cfg, sec, !failed && serr == nil)
		if failed || serr != nil {
			return 1
		}
		if len(cfg.Skipped) > 0 {
			return 3 // as without --json: valid, some conns skipped
		}
		return 0
	}
	for _, d := range cfg.Diags {
		fmt.Fprintln(env.Stderr, d)
	}
	if sec != nil {
		for _, d := range sec.Diags {
			fmt.Fprintln(env.Stderr, d)
		}
	}
	if serr != nil {
		failed = true
		if sec == nil {
			fmt.Fprintf(env.Stderr, "%s: %v\n", cf.Secrets, serr)
		}
	}
	if *dump {
		for _, c := range cfg.Conns {
			c.Dump(env.Stdout)
			fmt.Fprintln(env.Stdout)
		}
		if sec != nil {
			sec.Dump(env.Stdout)
		}
	}
	extra := 0
	if sec != nil {
		extra = len(sec.Diags.Errors())
	}
	if failed && len(cfg.Diags.Errors())+extra == 0 {
		extra = 1 // the secrets file could not be read
	}
	verdict, code := cfg.Summary(cf.Config, extra)
	fmt.Fprintln(env.Stderr, verdict)
	return code
}

// loadSecretsFor loads the secrets file; a missing one is fine when no
// conn needs a secret (manual keying, for example).
func loadSecretsFor(cfg *conf.Config, path string) (*conf.Secrets, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		for _, c := range cfg.Conns {
			if !c.Manual && c.Auto != "ignore" && c.AuthBy == "secret" {
				return nil, fmt.Errorf("conn %s uses authby=secret but there is no secrets file", c.Name)
			}
		}
		return nil, nil
	}
	return conf.LoadSecrets(path)
}
