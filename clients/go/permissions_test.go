package backbeat

// The Go client under the shipped NATS permissions (deploy/nats/backbeat.conf,
// docs/protocol.md "Subjects"): a real nats-server with that file, a pulse
// with its nkey seed, and the client as the `consumer` user. It joins (its
// timeline request goes on .request.timeline), follows the beat and changes
// the tempo with the admin token on .request.control; a publication of the
// same user on the timeline subject is refused by the server.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

func TestLiveShippedPermissions(t *testing.T) {
	dir := t.TempDir()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	seedPath := filepath.Join(dir, "pulse.nk")
	if err := os.WriteFile(seedPath, append(seed, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	password, token := fmt.Sprintf("pw-%d", time.Now().UnixNano()), fmt.Sprintf("tok-%d", time.Now().UnixNano())
	// nats-server resolves the file's $BACKBEAT_* variables from its environment.
	t.Setenv("BACKBEAT_PULSE_NKEY", pub)
	t.Setenv("BACKBEAT_CONSUMER_PASSWORD", password)
	conf := filepath.Join("..", "..", "deploy", "nats", "backbeat.conf")
	port := natsServer(t, dir, "-c", conf)
	const cluster = "chorus-aus-01" // the cluster id the file spells out
	c := pulseCluster(t, dir, fmt.Sprintf("nats://127.0.0.1:%d", port), cluster, 1, 600,
		"-nats-nkey", seedPath, "-admin-token", token)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	client, err := Connect(Options{Servers: []string{url}, Cluster: cluster, User: "consumer", Password: password,
		ConnectTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("%v\n%s", err, c.logs())
	}
	defer client.Close()

	scheduled, err := client.RequestTempo(context.Background(), 560, "under permissions", token)
	if err != nil || scheduled.TempoBPM != 560 || scheduled.PreviousBPM != 600 {
		t.Fatalf("RequestTempo: %+v %v\n%s", scheduled, err, c.logs())
	}
	// The same user may not publish on the timeline subject.
	refused := make(chan error, 1)
	forger, err := nats.Connect(url, nats.UserInfo("consumer", password),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case refused <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	if err := forger.Publish("backbeat."+cluster+".timeline", []byte(`{"type":"backbeat.timeline.v1"}`)); err != nil {
		t.Fatal(err)
	}
	_ = forger.Flush()
	select {
	case err := <-refused:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("the forgery's error: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("no permissions violation for a consumer's publication on the timeline subject")
	}

	beats, changed := 0, false
	deadline := time.Now().Add(15 * time.Second)
	for (!changed || beats < 10) && time.Now().Before(deadline) {
		switch e := next(t, client, 5*time.Second); e.Kind {
		case EventBeat:
			checkBeat(t, client, e)
			beats++
		case EventTempoChanged:
			changed = e.BPM == 560 && e.AtBeat == scheduled.ApplyAtBeat
		}
	}
	if !changed || beats < 10 {
		t.Fatalf("tempo changed %v, %d beats\n%s", changed, beats, c.logs())
	}
}
