package cli

import (
	"encoding/json"
	"io"
	"net/netip"

	"github.com/gosec-ipsec/gosec/internal/conf"
)

// ConfCheckSchema is the version of `gosec conf check --json` output. It
// goes up when a field changes meaning or goes away; new fields do not
// change it.
const ConfCheckSchema = 1

// confCheckJSON is what `gosec conf check --json` prints. Keys and PSKs
// are never printed: manual keys appear as their lengths, secrets as
// their selectors and type.
type confCheckJSON struct {
	Schema      int               `json:"schema"`
	Config      string            `json:"config"`
	Secrets     string            `json:"secrets"`
	OK          bool              `json:"ok"`
	Diagnostics []diagJSON        `json:"diagnostics"`
	Setup       map[string]string `json:"setup"`
	Conns       []connJSON        `json:"conns"`
	// Skipped are the conns left out (a feature gosec lacks, a host name
	// that does not resolve); the exit status is then 3.
	Skipped    []skippedJSON `json:"skipped"`
	SecretList []secretJSON  `json:"secret_list"`
}

type skippedJSON struct {
	Name string `json:"name"`
	File string `json:"file"`
	Line int    `json:"line"` // of the keyword that needs the feature
	// Feature is what is missing ("IPv6", "host names that do not
	// resolve"...), Message the whole reason.
	Feature string `json:"feature"`
	Message string `json:"message"`
}

type diagJSON struct {
	File     string `json:"file"`
	Line     int    `json:"line,omitempty"`
	Severity string `json:"severity"` // "error" or "warning"
	Message  string `json:"message"`
}

type endJSON struct {
	Host      string   `json:"host"`
	Addr      string   `json:"addr,omitempty"`
	Subnets   []string `json:"subnets,omitempty"`
	ID        string   `json:"id,omitempty"`
	Proto     uint8    `json:"proto,omitempty"`
	Port      uint16   `json:"port,omitempty"`
	NextHop   string   `json:"nexthop,omitempty"`
	SPI       uint32   `json:"spi,omitempty"`
	KeyLength struct {
		ESPEnc  int `json:"espenc,omitempty"`
		ESPAuth int `json:"espauth,omitempty"`
		AH      int `json:"ah,omitempty"`
	} `json:"key_lengths"`
}

type connJSON struct {
	Name         string  `json:"name"`
	File         string  `json:"file"`
	Line         int     `json:"line"`
	Auto         string  `json:"auto"`
	Type         string  `json:"type"`
	Keying       string  `json:"keying"` // "ike" or "manual"
	KeyExchange  string  `json:"keyexchange,omitempty"`
	AuthBy       string  `json:"authby,omitempty"`
	IKE          string  `json:"ike,omitempty"`
	ESP          string  `json:"esp,omitempty"`
	AH           string  `json:"ah,omitempty"`
	PFS          bool    `json:"pfs"`
	IKELifetime  float64 `json:"ikelifetime_seconds"`
	Lifetime     float64 `json:"lifetime_seconds"`
	Rekey        bool    `json:"rekey"`
	RekeyMargin  float64 `json:"rekeymargin_seconds"`
	KeyingTries  int     `json:"keyingtries"`
	DPDDelay     float64 `json:"dpddelay_seconds"`
	DPDTimeout   float64 `json:"dpdtimeout_seconds"`
	DPDAction    string  `json:"dpdaction,omitempty"`
	ForceEncaps  bool    `json:"forceencaps"`
	ReplayWindow int     `json:"replay_window"`
	ESN          bool    `json:"esn"`
	Debug        string  `json:"debug,omitempty"`
	Left         endJSON `json:"left"`
	Right        endJSON `json:"right"`
}

type secretJSON struct {
	File string   `json:"file"`
	Line int      `json:"line"`
	IDs  []string `json:"ids"`
	Type string   `json:"type"`
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func endToJSON(e *conf.End) endJSON {
	out := endJSON{Host: e.Host, Addr: addrString(e.Addr), ID: e.ID, Proto: e.Proto, Port: e.Port,
		NextHop: addrString(e.NextHop), SPI: e.SPI}
	for _, p := range e.Subnets {
		out.Subnets = append(out.Subnets, p.String())
	}
	out.KeyLength.ESPEnc, out.KeyLength.ESPAuth, out.KeyLength.AH = len(e.ESPEncKey), len(e.ESPAuthKey), len(e.AHKey)
	return out
}

// writeConfCheckJSON prints the result of a check as JSON.
func writeConfCheckJSON(w io.Writer, configPath, secretsPath string, cfg *conf.Config, sec *conf.Secrets, ok bool) error {
	out := confCheckJSON{Schema: ConfCheckSchema, Config: configPath, Secrets: secretsPath, OK: ok,
		Diagnostics: []diagJSON{}, Conns: []connJSON{}, Skipped: []skippedJSON{}, SecretList: []secretJSON{}, Setup: map[string]string{}}
	addDiags := func(ds conf.Diags) {
		for _, d := range ds {
			sev := "error"
			if d.Warning {
				sev = "warning"
			}
			out.Diagnostics = append(out.Diagnostics, diagJSON{File: d.File, Line: d.Line, Severity: sev, Message: d.Msg})
		}
	}
	if cfg != nil {
		addDiags(cfg.Diags)
		for k, v := range cfg.Setup {
			out.Setup[k] = v
		}
		for _, c := range cfg.Conns {
			cj := connJSON{Name: c.Name, File: c.File, Line: c.Line, Auto: c.Auto, Type: c.Type, Keying: "ike",
				KeyExchange: c.KeyExchange, AuthBy: c.AuthBy, PFS: c.PFS, IKELifetime: c.IKELifetime.Seconds(),
				Lifetime: c.KeyLife.Seconds(), Rekey: c.Rekey, RekeyMargin: c.RekeyMargin.Seconds(), KeyingTries: c.KeyingTries,
				DPDDelay: c.DPDDelay.Seconds(), DPDTimeout: c.DPDTimeout.Seconds(), DPDAction: c.DPDAction,
				ForceEncaps: c.ForceEncaps, ReplayWindow: c.ReplayWindow, ESN: c.ESN, Debug: c.Debug,
				Left: endToJSON(&c.Left), Right: endToJSON(&c.Right)}
			if c.Manual {
				cj.Keying = "manual"
			} else {
				cj.IKE = c.IKE.String()
			}
			if c.Proto() == "ah" {
				cj.AH = c.AH.String()
			} else {
				cj.ESP = c.ESP.String()
			}
			out.Conns = append(out.Conns, cj)
		}
		for _, sk := range cfg.Skipped {
			file, line := sk.Where()
			out.Skipped = append(out.Skipped, skippedJSON{Name: sk.Name, File: file, Line: line, Feature: sk.Feature, Message: sk.Msg})
		}
	}
	if sec != nil {
		addDiags(sec.Diags)
		for _, s := range sec.List {
			ids := s.IDs
			if ids == nil {
				ids = []string{}
			}
			out.SecretList = append(out.SecretList, secretJSON{File: s.File, Line: s.Line, IDs: ids, Type: s.Type})
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
