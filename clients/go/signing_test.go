package backbeat

// Signed publications against docs/vectors/signatures.json: the verifier
// gives every case's result (the node's own signer made the signed payloads;
// Tests/PulseTests checks it reproduces them byte for byte).

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

type signatureVectors struct {
	Keys []struct {
		Name       string `json:"name"`
		PublicHex  string `json:"public_hex"`
		KeyID      string `json:"key_id"`
		PublicPEM  string `json:"public_pem"`
		PrivatePEM string `json:"private_pem"`
	} `json:"keys"`
	Trusted []string `json:"trusted"`
	Cases   []struct {
		Name     string `json:"name"`
		Payload  string `json:"payload"`
		Result   string `json:"result"`
		SignedBy string `json:"signed_by"`
	} `json:"cases"`
}

func loadSignatureVectors(t *testing.T) (signatureVectors, map[string]ed25519.PublicKey) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "vectors", "signatures.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v signatureVectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	keys := map[string]ed25519.PublicKey{}
	for _, k := range v.Keys {
		pub, err := ParsePublicKeyPEM([]byte(k.PublicPEM))
		if err != nil {
			t.Fatalf("%s: %v", k.Name, err)
		}
		if hex.EncodeToString(pub) != k.PublicHex || KeyID(pub) != k.KeyID {
			t.Fatalf("%s: public key %x id %s, want %s id %s", k.Name, pub, KeyID(pub), k.PublicHex, k.KeyID)
		}
		keys[k.Name] = pub
	}
	return v, keys
}

func TestSignatureVectors(t *testing.T) {
	v, keys := loadSignatureVectors(t)
	var trusted []ed25519.PublicKey
	for _, name := range v.Trusted {
		trusted = append(trusted, keys[name])
	}
	verifier, err := NewVerifier(trusted...)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Cases) < 10 {
		t.Fatalf("only %d cases", len(v.Cases))
	}
	for _, c := range v.Cases {
		got := verifier.Check([]byte(c.Payload))
		if got == "" {
			got = "valid"
		}
		if got != c.Result {
			t.Errorf("%s: %s, want %s", c.Name, got, c.Result)
		}
	}
	// After a rotation's overlap, the old key's publications are unknown.
	onlyNext, _ := NewVerifier(keys["next"])
	for _, c := range v.Cases {
		if c.SignedBy == "current" {
			if got := onlyNext.Check([]byte(c.Payload)); got != RefusedUnknownKey {
				t.Errorf("%s under the next key only: %q, want unknown_key", c.Name, got)
			}
		}
	}
	if _, err := NewVerifier(); err == nil {
		t.Error("a verifier without keys was made")
	}
	if _, err := ParsePublicKeyPEM([]byte(v.Keys[0].PublicPEM[:20])); err == nil {
		t.Error("a truncated PEM was read")
	}
}

// The client drops what is not signed by its keys before the frame rules, and counts it.
func TestClientRefusesUnsignedFrames(t *testing.T) {
	v, keys := loadSignatureVectors(t)
	c := &Client{opts: Options{Cluster: "chorus-aus-01", LocalClock: func() int64 { return 0 }},
		events: make(chan Event, 16), tracker: NewFrameTracker("chorus-aus-01"), refetchCh: make(chan struct{}, 1)}
	c.verifier, _ = NewVerifier(keys["current"], keys["next"])
	byResult := map[string]string{}
	for _, cs := range v.Cases {
		byResult[cs.Result] = cs.Payload
	}
	for _, r := range []string{RefusedUnsigned, RefusedUnknownKey, RefusedBadSignature} {
		c.onBeat(&nats.Msg{Data: []byte(byResult[r])})
		if e := <-c.events; e.Kind != EventRefused || e.Reason != r {
			t.Errorf("%s frame: event %+v", r, e)
		}
	}
	c.onTimeline(&nats.Msg{Data: []byte(byResult[RefusedUnsigned])})
	if e := <-c.events; e.Kind != EventRefused || e.Reason != "timeline_unsigned" {
		t.Errorf("unsigned publication: event %+v", e)
	}
	if n := c.SignatureRefusals(); n != 4 {
		t.Errorf("%d signature refusals, want 4", n)
	}
	if accepted, _, _ := c.Counts(); accepted != 0 {
		t.Errorf("%d frames accepted", accepted)
	}
}

// A real pulse -sign-key (the vectors' current key) and nats-server: the
// client holding the public keys takes the signed frames and timeline, and
// refuses and counts a forged unsigned copy of a frame.
func TestLiveSignedNode(t *testing.T) {
	v, keys := loadSignatureVectors(t)
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "sign.key")
	if err := os.WriteFile(keyPath, []byte(v.Keys[0].PrivatePEM), 0o600); err != nil {
		t.Fatal(err)
	}
	port := natsServer(t, dir)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	c := pulseCluster(t, dir, url, "gosigned", 1, 600, "-sign-key", keyPath)
	client, err := Connect(Options{Servers: []string{url}, Cluster: "gosigned", ConnectTimeout: 10 * time.Second,
		PublicKeys: []ed25519.PublicKey{keys["current"], keys["next"]}})
	if err != nil {
		t.Fatalf("%v\n%s", err, c.logs())
	}
	defer client.Close()
	frames := make(chan []byte, 64)
	sub, err := client.Conn().Subscribe("backbeat.gosigned.beat", func(m *nats.Msg) {
		select {
		case frames <- m.Data:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	beats, sent := 0, false
	var refused []string
	deadline := time.Now().Add(5 * time.Second)
	for (beats < 15 || len(refused) == 0) && time.Now().Before(deadline) {
		e := next(t, client, 2*time.Second)
		switch e.Kind {
		case EventBeat:
			beats++
		case EventRefused:
			refused = append(refused, e.Reason)
		}
		if !sent && beats >= 5 {
			real := <-frames
			if client.verifier.Check(real) != "" {
				t.Fatalf("the node's frame does not verify: %s", real)
			}
			// The real frame without its signature members, sent again.
			forged := append(append([]byte{}, real[:len(real)-163]...), '}')
			if err := client.Conn().Publish("backbeat.gosigned.beat", forged); err != nil {
				t.Fatal(err)
			}
			sent = true
		}
	}
	if beats < 15 {
		t.Errorf("%d signed frames accepted, want 15\n%s", beats, c.logs())
	}
	if len(refused) != 1 || refused[0] != RefusedUnsigned || client.SignatureRefusals() != 1 {
		t.Errorf("refused %v, counted %d; want [unsigned], 1", refused, client.SignatureRefusals())
	}
}
