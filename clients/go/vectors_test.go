package backbeat

// The Go client against the shared conformance vectors (docs/vectors,
// generated from the node's own code): every case is recomputed from the
// file's inputs and must give the file's outputs, field by field.

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

type specJSON struct {
	ClusterID string `json:"cluster_id"`
	Epoch     struct {
		StartBeat int64 `json:"start_beat"`
		StartNs   int64 `json:"start_ns"`
		BPM       int64 `json:"bpm"`
	} `json:"epoch"`
	Pending *changeJSON `json:"pending"`
	Bar     int64       `json:"bar"`
	Phases  []string    `json:"phases"`
}

type changeJSON struct {
	AtBeat int64 `json:"at_beat"`
	BPM    int64 `json:"bpm"`
}

func (s specJSON) timeline(change *changeJSON) (*Timeline, error) {
	var c *TempoChange
	if change != nil {
		c = &TempoChange{AtBeat: change.AtBeat, BPM: change.BPM}
	}
	return NewTimeline(s.ClusterID, Epoch{s.Epoch.StartBeat, s.Epoch.StartNs, s.Epoch.BPM}, c, s.Bar, s.Phases)
}

func load(t *testing.T, name string, into interface{}) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "vectors", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

type timeQuery struct {
	TNs            int64   `json:"t_ns"`
	Beat           int64   `json:"beat"`
	OffsetNs       int64   `json:"offset_ns"`
	LengthNs       int64   `json:"length_ns"`
	Beats          float64 `json:"beats"`
	Quantum        int64   `json:"quantum"`
	PhaseInQuantum float64 `json:"phase_in_quantum"`
	Phase          string  `json:"phase"`
	Downbeat       bool    `json:"downbeat"`
	WindowID       string  `json:"window_id"`
	BPM            int64   `json:"bpm"`
	NextBeat       int64   `json:"next_beat"`
	NextBeatNs     int64   `json:"next_beat_ns"`
	NextDownbeat   int64   `json:"next_downbeat"`
	NextDownbeatNs int64   `json:"next_downbeat_ns"`
}

type beatQuery struct {
	Beat       int64  `json:"beat"`
	InstantNs  int64  `json:"instant_ns"`
	DeadlineNs int64  `json:"deadline_ns"`
	DeadlineMs int64  `json:"deadline_ms"`
	Downbeat   bool   `json:"downbeat"`
	Phase      string `json:"phase"`
	WindowID   string `json:"window_id"`
	BPM        int64  `json:"bpm"`
	BarStart   int64  `json:"bar_start"`
}

func TestVectorsTimeline(t *testing.T) {
	var file struct {
		Cases []struct {
			Name     string      `json:"name"`
			Timeline specJSON    `json:"timeline"`
			At       []timeQuery `json:"at"`
			Beats    []beatQuery `json:"beats"`
		} `json:"cases"`
	}
	load(t, "timeline.json", &file)
	if len(file.Cases) < 5 {
		t.Fatalf("only %d cases", len(file.Cases))
	}
	for _, c := range file.Cases {
		tl, err := c.Timeline.timeline(c.Timeline.Pending)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		for _, q := range c.At {
			p := tl.Position(q.TNs)
			nb, nd := tl.NextBeat(q.TNs), tl.NextDownbeat(q.TNs)
			info := tl.InfoAt(q.TNs)
			got := timeQuery{q.TNs, p.Beat, p.OffsetNs, p.LengthNs, p.Beats(), q.Quantum, p.Phase(q.Quantum), info.Phase,
				info.Downbeat, info.WindowID, info.BPM, nb.Index, nb.InstantNs, nd.Index, nd.InstantNs}
			if got != q {
				t.Errorf("%s at %d:\n got %+v\nwant %+v", c.Name, q.TNs, got, q)
			}
		}
		for _, b := range c.Beats {
			i := tl.Info(b.Beat)
			got := beatQuery{b.Beat, i.InstantNs, i.DeadlineNs, floorDiv(i.DeadlineNs, 1_000_000), i.Downbeat, i.Phase,
				i.WindowID, i.BPM, tl.BarStart(b.Beat)}
			if got != b {
				t.Errorf("%s beat %d:\n got %+v\nwant %+v", c.Name, b.Beat, got, b)
			}
		}
	}
}

func TestVectorsTempo(t *testing.T) {
	type instant struct {
		Beat      int64 `json:"beat"`
		InstantNs int64 `json:"instant_ns"`
		BPM       int64 `json:"bpm"`
	}
	type position struct {
		TNs      int64 `json:"t_ns"`
		Beat     int64 `json:"beat"`
		OffsetNs int64 `json:"offset_ns"`
		LengthNs int64 `json:"length_ns"`
	}
	var file struct {
		Cases []struct {
			Name      string     `json:"name"`
			Timeline  specJSON   `json:"timeline"`
			Change    changeJSON `json:"change"`
			Result    string     `json:"result"`
			AtNs      *int64     `json:"at_ns"`
			Instants  []instant  `json:"instants"`
			Positions []position `json:"positions"`
		} `json:"cases"`
	}
	load(t, "tempo.json", &file)
	if len(file.Cases) < 5 {
		t.Fatalf("only %d cases", len(file.Cases))
	}
	for _, c := range file.Cases {
		tl, err := c.Timeline.timeline(&c.Change)
		if c.Result != "scheduled" {
			// The client has one code for every refused change; the node's reason is in the file.
			if err == nil || err.(*TimelineError).Reason != "out_of_range" {
				t.Errorf("%s: want refused (%s), got %v", c.Name, c.Result, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.Name, err)
			continue
		}
		if c.AtNs == nil || tl.Pending.StartNs != *c.AtNs {
			t.Errorf("%s: change at %d, want %v", c.Name, tl.Pending.StartNs, c.AtNs)
		}
		for _, q := range c.Instants {
			if got := (instant{q.Beat, tl.InstantNs(q.Beat), tl.BPMOf(q.Beat)}); got != q {
				t.Errorf("%s: got %+v want %+v", c.Name, got, q)
			}
		}
		for _, q := range c.Positions {
			p := tl.Position(q.TNs)
			if got := (position{q.TNs, p.Beat, p.OffsetNs, p.LengthNs}); got != q {
				t.Errorf("%s: got %+v want %+v", c.Name, got, q)
			}
		}
	}
}

type decodedJSON struct {
	ClusterID  string `json:"cluster_id"`
	BeatIndex  int64  `json:"beat_index"`
	Downbeat   bool   `json:"downbeat"`
	Phase      string `json:"phase"`
	HLCMs      int64  `json:"hlc_ms"`
	HLCCounter uint32 `json:"hlc_counter"`
	Publisher  string `json:"publisher"`
	DeadlineMs int64  `json:"deadline_ms"`
	TempoBPM   int64  `json:"tempo_bpm"`
	WindowID   string `json:"window_id"`
	Term       uint64 `json:"term"`
	Degraded   bool   `json:"degraded"`
}

func TestVectorsFrames(t *testing.T) {
	var file struct {
		Cases []struct {
			Name     string       `json:"name"`
			Frame    *string      `json:"frame"`
			FrameHex *string      `json:"frame_hex"`
			Result   string       `json:"result"`
			Decoded  *decodedJSON `json:"decoded"`
		} `json:"cases"`
	}
	load(t, "frames.json", &file)
	if len(file.Cases) < 40 {
		t.Fatalf("only %d cases", len(file.Cases))
	}
	for _, c := range file.Cases {
		var data []byte
		if c.Frame != nil {
			data = []byte(*c.Frame)
		} else {
			var err error
			if data, err = hex.DecodeString(*c.FrameHex); err != nil {
				t.Fatal(err)
			}
		}
		f, err := DecodeFrame(data)
		if err != nil {
			if reason := err.(*FrameError).Reason; reason != c.Result {
				t.Errorf("%s: refused %s, want %s", c.Name, reason, c.Result)
			}
			continue
		}
		got := decodedJSON{f.ClusterID, f.BeatIndex, f.Downbeat, f.Phase, f.HLCMs, f.HLCCounter, f.Publisher,
			f.DeadlineMs, f.TempoBPM, f.WindowID, f.Term, f.Degraded}
		if c.Result != "accepted" || c.Decoded == nil || got != *c.Decoded {
			t.Errorf("%s: accepted %+v, want %s %+v", c.Name, got, c.Result, c.Decoded)
		}
	}
}

type eventJSON struct {
	Kind         string  `json:"kind"`
	Beat         *int64  `json:"beat,omitempty"`
	First        *int64  `json:"first,omitempty"`
	Last         *int64  `json:"last,omitempty"`
	Term         *uint64 `json:"term,omitempty"`
	PreviousTerm *uint64 `json:"previous_term,omitempty"`
	Publisher    *string `json:"publisher,omitempty"`
	BPM          *int64  `json:"bpm,omitempty"`
	PreviousBPM  *int64  `json:"previous_bpm,omitempty"`
	AtBeat       *int64  `json:"at_beat,omitempty"`
	Reason       *string `json:"reason,omitempty"`
	Field        *string `json:"field,omitempty"`
}

// eventSpec is an Event in the vectors' form (docs/vectors/README.md).
func eventSpec(e Event) eventJSON {
	i := func(v int64) *int64 { return &v }
	u := func(v uint64) *uint64 { return &v }
	s := func(v string) *string { return &v }
	out := eventJSON{Kind: string(e.Kind)}
	switch e.Kind {
	case EventBeat:
		out.Beat, out.Term, out.Publisher = i(e.Frame.BeatIndex), u(e.Frame.Term), s(e.Frame.Publisher)
	case EventGap:
		out.First, out.Last = i(e.First), i(e.Last)
	case EventDegraded:
		out.Beat = i(e.Frame.BeatIndex)
	case EventLeaderChanged:
		out.Term, out.PreviousTerm, out.Publisher = u(e.Term), u(e.PreviousTerm), s(e.Publisher)
	case EventTempoChanged:
		out.BPM, out.PreviousBPM, out.AtBeat = i(e.BPM), i(e.PreviousBPM), i(e.AtBeat)
	case EventTempoScheduled:
		out.BPM, out.AtBeat = i(e.BPM), i(e.AtBeat)
	case EventTimelineUpdated:
		out.Term = u(e.Term)
	case EventRefused:
		out.Reason = s(e.Reason)
	case EventMismatch:
		out.Beat, out.Field = i(e.Frame.BeatIndex), s(e.Field)
	}
	return out
}

func TestVectorsSequences(t *testing.T) {
	type state struct {
		LastIndex       int64   `json:"last_index"`
		FenceTerm       uint64  `json:"fence_term"`
		Accepted        uint64  `json:"accepted"`
		Duplicates      uint64  `json:"duplicates"`
		Refused         uint64  `json:"refused"`
		TimelineVersion []int64 `json:"timeline_version"`
	}
	var file struct {
		Cases []struct {
			Name      string `json:"name"`
			ClusterID string `json:"cluster_id"`
			Steps     []struct {
				Timeline   *string     `json:"timeline"`
				Frame      *string     `json:"frame"`
				ReceivedNs int64       `json:"received_ns"`
				Events     []eventJSON `json:"events"`
				State      state       `json:"state"`
			} `json:"steps"`
		} `json:"cases"`
	}
	load(t, "sequences.json", &file)
	if len(file.Cases) < 10 {
		t.Fatalf("only %d cases", len(file.Cases))
	}
	for _, c := range file.Cases {
		tr := NewFrameTracker(c.ClusterID)
		var held *Timeline
		for i, step := range c.Steps {
			var events []Event
			if step.Timeline != nil {
				decoded, err := DecodeTimeline([]byte(*step.Timeline), c.ClusterID)
				if err != nil {
					events = []Event{{Kind: EventRefused, Reason: "timeline_" + err.(*TimelineError).Reason}}
				} else {
					held, events = tr.Adopt(decoded, held)
				}
			} else {
				events = tr.Receive([]byte(*step.Frame), step.ReceivedNs, held)
			}
			got := []eventJSON{}
			for _, e := range events {
				got = append(got, eventSpec(e))
			}
			want := step.Events
			if want == nil {
				want = []eventJSON{}
			}
			if !reflect.DeepEqual(got, want) {
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(want)
				t.Errorf("%s, step %d: events\n got %s\nwant %s", c.Name, i, g, w)
			}
			st := state{tr.LastIndex, tr.FenceTerm, tr.Accepted, tr.Duplicates, tr.Refused, nil}
			if held != nil {
				v := held.Version()
				st.TimelineVersion = v[:]
			}
			if !reflect.DeepEqual(st, step.State) {
				t.Errorf("%s, step %d: state\n got %+v\nwant %+v", c.Name, i, st, step.State)
			}
		}
	}
}
