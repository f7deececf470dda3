// Package savekeys writes the keys of negotiated SAs in Wireshark's own
// table formats, as strongSwan's save-keys plugin does, so that a capture
// of IKEv1 and ESP traffic can be decrypted: ikev1_decryption_table
// (initiator cookie, phase-1 encryption key) and esp_sa (the ESP SA table).
// Copy both files into a Wireshark profile directory (for example
// ~/.config/wireshark/) and Wireshark decrypts what it captured.
//
// Key export defeats the purpose of IPsec for anyone who can read the
// files: it is opt-in, the files are created with mode 0600 in a
// directory of mode 0700, and the daemon warns loudly while it is on.
package savekeys

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/integ"
)

// The file names Wireshark reads its tables from.
const (
	IKEv1File = "ikev1_decryption_table"
	ESPFile   = "esp_sa"
)

// Writer appends SA keys to the two tables in one directory.
type Writer struct {
	dir string
	mu  sync.Mutex
	ike *os.File
	esp *os.File
}

// Open creates dir if needed (mode 0700) and opens the two tables for
// appending, with mode 0600 (an existing file is reset to 0600).
func Open(dir string) (*Writer, error) {
	if dir == "" {
		return nil, fmt.Errorf("savekeys: no directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("savekeys: %w", err)
	}
	w := &Writer{dir: dir}
	var err error
	if w.ike, err = openTable(filepath.Join(dir, IKEv1File)); err != nil {
		return nil, err
	}
	if w.esp, err = openTable(filepath.Join(dir, ESPFile)); err != nil {
		w.ike.Close()
		return nil, err
	}
	return w, nil
}

func openTable(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("savekeys: %w", err)
	}
	// Mode and type are checked on the open descriptor: a file that was
	// there before gets 0600, a symlink or FIFO planted there is refused.
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("savekeys: %w", err)
	}
	return f, nil
}

// Dir is the directory the tables are written to.
func (w *Writer) Dir() string { return w.dir }

// IKEv1 records a phase-1 SA: its initiator cookie and the encryption key
// (RFC 2409's Ka, the key the ISAKMP messages are encrypted with).
// Wireshark's ikev1_decryption_table holds both as unquoted hex.
func (w *Writer) IKEv1(icookie [8]byte, encKey []byte) error {
	return w.append(w.ike, IKEv1Line(icookie, encKey))
}

// ESP records one ESP SA (one direction): outer source and destination,
// SPI and keys, as a line of Wireshark's esp_sa table.
func (w *Writer) ESP(src, dst netip.Addr, spi uint32, cfg esp.Config) error {
	line, err := ESPLine(src, dst, spi, cfg)
	if err != nil {
		// A comment keeps the file loadable and says why the SA is
		// missing.
		line = fmt.Sprintf("# SPI 0x%08x: %v\n", spi, err)
	}
	if werr := w.append(w.esp, line); werr != nil {
		return werr
	}
	return err
}

func (w *Writer) append(f *os.File, line string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := f.WriteString(line); err != nil {
		return fmt.Errorf("savekeys: %w", err)
	}
	return nil
}

// Close closes both tables.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err1 := w.ike.Close()
	err2 := w.esp.Close()
	if err1 != nil {
		return err1
	}
	return err2
}

// IKEv1Line is one line of ikev1_decryption_table.
func IKEv1Line(icookie [8]byte, encKey []byte) string {
	return fmt.Sprintf("%x,%x\n", icookie[:], encKey)
}

// ESPLine is one line of esp_sa (Wireshark 4.0's eight fields: protocol,
// source, destination, SPI, encryption, key, authentication, key).
func ESPLine(src, dst netip.Addr, spi uint32, cfg esp.Config) (string, error) {
	enc, err := wiresharkCipher(cfg.Cipher, len(cfg.EncKey))
	if err != nil {
		return "", err
	}
	auth, ok := wiresharkInteg[cfg.Integ]
	if !ok {
		return "", fmt.Errorf("integrity algorithm %v has no Wireshark name", cfg.Integ)
	}
	family := "IPv4"
	if src.Is6() && !src.Is4In6() {
		family = "IPv6"
	}
	return fmt.Sprintf("%q,%q,%q,\"0x%08x\",%q,\"0x%x\",%q,\"0x%x\"\n",
		family, src.Unmap().String(), dst.Unmap().String(), spi, enc, cfg.EncKey, auth, cfg.AuthKey), nil
}

// wiresharkCipher names an ESP cipher as Wireshark's ESP preferences do.
func wiresharkCipher(c esp.Cipher, keyLen int) (string, error) {
	switch c {
	case esp.CipherNull:
		return "NULL", nil
	case esp.Cipher3DESCBC:
		return "TripleDES-CBC [RFC2451]", nil
	case esp.CipherAESCBC:
		return "AES-CBC [RFC3602]", nil
	case esp.CipherAESCTR:
		return "AES-CTR [RFC3686]", nil
	case esp.CipherAESGCM16:
		return "AES-GCM with 16 octet ICV [RFC4106]", nil
	}
	return "", fmt.Errorf("Wireshark cannot decrypt %v (%d-octet key)", c, keyLen)
}

var wiresharkInteg = map[integ.Algorithm]string{
	integ.None:           "NULL",
	integ.HMACMD5_96:     "HMAC-MD5-96 [RFC2403]",
	integ.HMACSHA1_96:    "HMAC-SHA-1-96 [RFC2404]",
	integ.HMACSHA256_128: "HMAC-SHA-256-128 [RFC4868]",
	integ.HMACSHA384_192: "HMAC-SHA-384-192 [RFC4868]",
	integ.HMACSHA512_256: "HMAC-SHA-512-256 [RFC4868]",
}
