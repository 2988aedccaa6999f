// Command backbeat-example is a consumer on the Go client that prints, for every beat,
//
//	beat 42 · work · window 3f2a… · position 42.003 · next downbeat in 1.25 s
//
// and the events (gaps, leader and tempo changes, degraded frames). When no
// pulse answers it prints one line naming the server, the subject and the
// wait, and exits 1.
//
//	backbeat-example [-timeout 5s] [nats://127.0.0.1:4222[,nats://...]] [cluster]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	backbeat "github.com/backbeat-pulse/pulse/clients/go"
)

func main() {
	timeout := flag.Duration("timeout", 5*time.Second, "how long to wait for NATS and a pulse's timeline")
	creds := flag.String("creds", "", "a NATS credentials file")
	nkey := flag.String("nkey", "", "a file holding an nkey user seed")
	flag.Parse()
	servers, cluster := "nats://127.0.0.1:4222", "chorus-aus-01"
	if flag.NArg() > 0 {
		servers = flag.Arg(0)
	}
	if flag.NArg() > 1 {
		cluster = flag.Arg(1)
	}
	client, err := backbeat.Connect(backbeat.Options{
		Servers: strings.Split(servers, ","), Cluster: cluster, ConnectTimeout: *timeout,
		CredentialsFile: *creds, NKeySeedFile: *nkey,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "backbeat-example:", err)
		os.Exit(1)
	}
	defer client.Close()
	if now, err := client.Beat(); err == nil {
		// A late joiner knows where the beat is before any frame arrives.
		fmt.Printf("joined at beat %d · %s (timeline from %s)\n", now.Index, now.Phase, client.Timeline().NodeID)
	}
	for e := range client.Events() {
		switch e.Kind {
		case backbeat.EventBeat:
			t := client.Timeline()
			next := t.NextDownbeat(e.InstantNs)
			position := t.Position(e.ReceivedNs)
			fmt.Printf("beat %d · %s · window %s… · position %.3f · next downbeat in %.2f s\n", e.Frame.BeatIndex,
				e.Frame.Phase, e.Frame.WindowID[:4], position.Beats(), float64(next.InstantNs-client.Now())/1e9)
		case backbeat.EventGap:
			fmt.Printf("gap: beats %d...%d never arrived\n", e.First, e.Last)
		case backbeat.EventLeaderChanged:
			fmt.Printf("new leader %s, term %d\n", e.Publisher, e.Term)
		case backbeat.EventTempoScheduled:
			fmt.Printf("tempo change to %d bpm scheduled at beat %d\n", e.BPM, e.AtBeat)
		case backbeat.EventTempoChanged:
			fmt.Printf("tempo %d → %d bpm at beat %d\n", e.PreviousBPM, e.BPM, e.AtBeat)
		case backbeat.EventDegraded:
			fmt.Printf("degraded frame for beat %d (no leader)\n", e.Frame.BeatIndex)
		case backbeat.EventRefused:
			fmt.Printf("refused: %s\n", e.Reason)
		case backbeat.EventConnection:
			if e.Up {
				fmt.Println("NATS connection back")
			} else {
				fmt.Println("NATS connection lost")
			}
		}
	}
}
