package sad

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrNoSPI means no free SPI was found (practically impossible).
var ErrNoSPI = errors.New("sad: no free SPI found")

// AllocSPI returns a random SPI >= 256 (1-255 are reserved, RFC 4303 2.1)
// that no SA of proto in the DB uses and no earlier AllocSPI reserved. It
// stays reserved until an SA with it is added or ReleaseSPI frees it, so
// concurrent negotiations never pick the same SPI.
func (db *DB) AllocSPI(proto Proto) (uint32, error) {
	if proto != ESP && proto != AH {
		return 0, fmt.Errorf("sad: SPI for protocol %v", proto)
	}
	var b [4]byte
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return 0, ErrClosed
	}
	for range 64 {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("sad: SPI: %w", err)
		}
		spi := binary.BigEndian.Uint32(b[:])
		if spi < 256 {
			continue
		}
		k := spiKey{spi, proto}
		if _, taken := db.reserved[k]; taken {
			continue
		}
		if len((*db.bySPI[spi%shards].Load())[k]) != 0 {
			continue
		}
		db.reserved[k] = struct{}{}
		return spi, nil
	}
	return 0, ErrNoSPI
}

// ReleaseSPI frees an SPI that AllocSPI reserved and no SA was added with
// (the negotiation failed). It reports whether it was reserved.
func (db *DB) ReleaseSPI(spi uint32, proto Proto) bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	k := spiKey{spi, proto}
	_, ok := db.reserved[k]
	delete(db.reserved, k)
	return ok
}
