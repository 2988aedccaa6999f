package backbeat

// Signed publications (docs/protocol.md, "Signatures"): a cluster started
// with -sign-key signs every frame, timeline publication and reply, and tempo
// announcement with Ed25519; a client given the cluster's public keys
// (Options.PublicKeys; old and new during a rotation) accepts only signed ones.
//
// A signed publication P ends with `,"kid":"<16 hex>","sig":"<128 hex>"}`; the
// signed message S is P without its `","sig":"…"` member (P[:len-139] + `"}`),
// kid the first 8 bytes of SHA-256 of the signer's raw public key.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"sort"
)

// Signature refusal reasons (Event.Reason; "timeline_" + reason for a publication).
const (
	RefusedUnsigned     = "unsigned"
	RefusedUnknownKey   = "unknown_key"
	RefusedBadSignature = "bad_signature"
)

const sigTrailer = 139 // `","sig":"` + 128 hex + `"}`

var (
	signedTrailer = regexp.MustCompile(`,"kid":"([0-9a-f]{16})","sig":"([0-9a-f]{128})"\}\z`)
	pubDERPrefix  = []byte{0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00}
)

// KeyID is the key id of a raw Ed25519 public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// ParsePublicKeyPEM reads a PEM Ed25519 public key (`openssl pkey -pubout`).
func ParsePublicKeyPEM(text []byte) (ed25519.PublicKey, error) {
	block, _ := pem.Decode(text)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("backbeat: not a PEM public key")
	}
	if len(block.Bytes) != len(pubDERPrefix)+ed25519.PublicKeySize || !bytes.HasPrefix(block.Bytes, pubDERPrefix) {
		return nil, errors.New("backbeat: not an Ed25519 public key (RFC 8410)")
	}
	return ed25519.PublicKey(block.Bytes[len(pubDERPrefix):]), nil
}

// Verifier checks signed publications against a set of public keys.
type Verifier struct {
	keys map[string]ed25519.PublicKey
}

// NewVerifier accepts publications signed by any of keys (raw 32-byte Ed25519 keys).
func NewVerifier(keys ...ed25519.PublicKey) (*Verifier, error) {
	v := &Verifier{keys: map[string]ed25519.PublicKey{}}
	for _, k := range keys {
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("backbeat: an Ed25519 public key is %d bytes (got %d)", ed25519.PublicKeySize, len(k))
		}
		v.keys[KeyID(k)] = k
	}
	if len(v.keys) == 0 {
		return nil, errors.New("backbeat: no public key given")
	}
	return v, nil
}

// KeyIDs are the key ids accepted, sorted.
func (v *Verifier) KeyIDs() []string {
	ids := make([]string, 0, len(v.keys))
	for id := range v.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Check returns "" when data is signed by one of the keys, else why not
// (RefusedUnsigned, RefusedUnknownKey, RefusedBadSignature).
func (v *Verifier) Check(data []byte) string {
	m := signedTrailer.FindSubmatch(data)
	if m == nil {
		return RefusedUnsigned
	}
	key, ok := v.keys[string(m[1])]
	if !ok {
		return RefusedUnknownKey
	}
	sig := make([]byte, ed25519.SignatureSize)
	if _, err := hex.Decode(sig, m[2]); err != nil {
		return RefusedUnsigned
	}
	message := append(append(make([]byte, 0, len(data)-sigTrailer+2), data[:len(data)-sigTrailer]...), '"', '}')
	if !ed25519.Verify(key, message, sig) {
		return RefusedBadSignature
	}
	return ""
}
