// Package backbeat is a consumer of a BACKBEAT pulse cluster's beat over NATS
// (docs/protocol.md): the cluster's timeline in hand, frames as confirmation.
//
// The timeline math is the contract's (requirements §1) in exact integer
// arithmetic, the same as the pulse's PulseCore: a consumer answers beat,
// fractional position, phase, window id and downbeat at any instant without a
// round trip. Frames are validated as PulseCore's BeatFrameDecoder does,
// duplicates dropped, term fenced, and gaps, degraded frames, leader and
// tempo changes delivered as events. docs/vectors holds the cases every
// client (Swift, Python, Go) and the node agree on.
package backbeat

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"strconv"
)

const (
	nsPerMinute = 60_000_000_000
	// MaxBPM is the highest tempo a node can be configured for.
	MaxBPM = 6000
	// Bounds of a validated epoch (PulseCore's TempoEpoch.validated).
	maxStartNs   = 7_258_118_400_000_000_000
	maxStartBeat = 1 << 48
	// MaxTermLead is how many terms a frame may be ahead of the known timeline.
	MaxTermLead = 8
	// MaxBeatsLate is how many beats after its instant a frame still counts.
	MaxBeatsLate = 4
	timelineType = "backbeat.timeline.v1"
)

var bigMinute = big.NewInt(nsPerMinute)

// Epoch is a tempo epoch: beat StartBeat is at StartNs (Unix ns) and later
// beats follow at BPM.
type Epoch struct {
	StartBeat int64
	StartNs   int64
	BPM       int64
}

// InstantNs is the instant of beat k: StartNs + floor((k-StartBeat)*60e9/BPM), exact.
func (e Epoch) InstantNs(k int64) int64 {
	d := new(big.Int).Mul(big.NewInt(k-e.StartBeat), bigMinute)
	d.Div(d, big.NewInt(e.BPM)) // Euclidean = floor for a positive divisor
	return e.StartNs + d.Int64()
}

// BeatAt is the largest k with InstantNs(k) <= t.
func (e Epoch) BeatAt(t int64) int64 {
	u := new(big.Int).Mul(big.NewInt(t-e.StartNs), big.NewInt(e.BPM))
	u.Add(u, big.NewInt(e.BPM-1))
	u.Div(u, bigMinute)
	return e.StartBeat + u.Int64()
}

// BeatInfo is one beat as the timeline defines it.
type BeatInfo struct {
	Index      int64
	InstantNs  int64
	DeadlineNs int64 // the instant of the next beat
	Downbeat   bool
	Phase      string
	WindowID   string
	BPM        int64
}

// BeatPosition is where an instant falls: OffsetNs into beat Beat, whose
// length is LengthNs (exact; PulseCore's BeatPosition).
type BeatPosition struct {
	Beat     int64
	OffsetNs int64
	LengthNs int64
}

// Beats is the position as one number, Beat + OffsetNs/LengthNs (Ableton
// Link's beatAtTime); bit for bit the Swift and Python value.
func (p BeatPosition) Beats() float64 {
	return float64(p.Beat) + float64(p.OffsetNs)/float64(p.LengthNs)
}

// Phase is the position in a cycle of quantum beats counted from beat 0, in
// [0, quantum) (Link's phaseAtTime; with quantum = the bar, the position in
// the bar). quantum must be >= 1.
func (p BeatPosition) Phase(quantum int64) float64 {
	if quantum < 1 {
		return math.NaN()
	}
	return float64(floorMod(p.Beat, quantum)) + float64(p.OffsetNs)/float64(p.LengthNs)
}

// Timeline is a cluster's committed timeline (backbeat.timeline.v1) and every
// local answer about it. A value; never modified after decoding.
type Timeline struct {
	ClusterID string
	Epoch     Epoch
	Pending   *Epoch // the next epoch, if a change is committed; StartBeat is its downbeat
	Bar       int64
	Phases    []string
	Term      uint64
	Leader    string // "" when the answering node knew none
	NodeID    string
	Degraded  bool
	NowNs     int64 // the answering node's timeline clock when it answered
}

// TimelineError is a timeline message that cannot be used; Reason is a snake_case code.
type TimelineError struct {
	Reason string
	Detail string
}

func (e *TimelineError) Error() string {
	if e.Detail == "" {
		return e.Reason
	}
	return e.Reason + ": " + e.Detail
}

// Version orders timelines: every committed change moves (epoch start, has pending) forward.
func (t *Timeline) Version() [2]int64 {
	p := int64(0)
	if t.Pending != nil {
		p = 1
	}
	return [2]int64{t.Epoch.StartBeat, p}
}

func olderVersion(a, b [2]int64) bool { return a[0] < b[0] || (a[0] == b[0] && a[1] < b[1]) }

func (t *Timeline) epochFor(k int64) Epoch {
	if t.Pending != nil && k >= t.Pending.StartBeat {
		return *t.Pending
	}
	return t.Epoch
}

// InstantNs is the instant of beat k (Unix ns on the timeline's clock), exact.
func (t *Timeline) InstantNs(k int64) int64 { return t.epochFor(k).InstantNs(k) }

// BeatAt is the beat in progress at t (the last whose instant is <= t).
func (t *Timeline) BeatAt(ns int64) int64 {
	if t.Pending != nil && ns >= t.Pending.StartNs {
		return t.Pending.BeatAt(ns)
	}
	return t.Epoch.BeatAt(ns)
}

// BPMOf is the tempo in force at beat k.
func (t *Timeline) BPMOf(k int64) int64 { return t.epochFor(k).BPM }

// IsDownbeat reports whether beat k starts a bar.
func (t *Timeline) IsDownbeat(k int64) bool { return floorMod(k, t.Bar) == 0 }

// BarStart is the first beat of k's bar.
func (t *Timeline) BarStart(k int64) int64 { return k - floorMod(k, t.Bar) }

// PhaseOf is the phase name of beat k: phases[(k mod bar) * len(phases) / bar].
func (t *Timeline) PhaseOf(k int64) string {
	return t.Phases[floorMod(k, t.Bar)*int64(len(t.Phases))/t.Bar]
}

// WindowIDOf is the window id of k's bar: the first 32 hex digits of sha256("cluster:barStart").
func (t *Timeline) WindowIDOf(k int64) string { return WindowID(t.ClusterID, t.BarStart(k)) }

// WindowID derives a window id from a cluster id and a bar's first beat.
func WindowID(clusterID string, barStart int64) string {
	sum := sha256.Sum256([]byte(clusterID + ":" + strconv.FormatInt(barStart, 10)))
	return hex.EncodeToString(sum[:16])
}

// Info is everything about beat k.
func (t *Timeline) Info(k int64) BeatInfo {
	return BeatInfo{
		Index: k, InstantNs: t.InstantNs(k), DeadlineNs: t.InstantNs(k + 1), Downbeat: t.IsDownbeat(k),
		Phase: t.PhaseOf(k), WindowID: t.WindowIDOf(k), BPM: t.BPMOf(k),
	}
}

// InfoAt is the beat in progress at ns.
func (t *Timeline) InfoAt(ns int64) BeatInfo { return t.Info(t.BeatAt(ns)) }

// Position is the fractional position at ns: the beat in progress and how far into it.
func (t *Timeline) Position(ns int64) BeatPosition {
	k := t.BeatAt(ns)
	start := t.InstantNs(k)
	return BeatPosition{Beat: k, OffsetNs: ns - start, LengthNs: t.InstantNs(k+1) - start}
}

// NextBeat is the first beat whose instant is after ns.
func (t *Timeline) NextBeat(ns int64) BeatInfo { return t.Info(t.BeatAt(ns) + 1) }

// NextDownbeat is the first downbeat whose instant is after ns.
func (t *Timeline) NextDownbeat(ns int64) BeatInfo {
	k := t.BeatAt(ns) + 1
	if r := floorMod(k, t.Bar); r != 0 {
		k += t.Bar - r
	}
	return t.Info(k)
}

func floorMod(a, b int64) int64 {
	r := a % b
	if r < 0 {
		r += b
	}
	return r
}

// equal reports whether two timelines are the same message (every field).
func (t *Timeline) equal(o *Timeline) bool {
	if t.ClusterID != o.ClusterID || t.Epoch != o.Epoch || t.Bar != o.Bar || t.Term != o.Term ||
		t.Leader != o.Leader || t.NodeID != o.NodeID || t.Degraded != o.Degraded || t.NowNs != o.NowNs ||
		len(t.Phases) != len(o.Phases) || (t.Pending == nil) != (o.Pending == nil) {
		return false
	}
	if t.Pending != nil && *t.Pending != *o.Pending {
		return false
	}
	for i := range t.Phases {
		if t.Phases[i] != o.Phases[i] {
			return false
		}
	}
	return true
}

// NewTimeline builds a timeline from its parts with the same validation as a
// decoded message (the cluster's own bounds): an error with reason out_of_range otherwise.
func NewTimeline(clusterID string, epoch Epoch, pending *TempoChange, bar int64, phases []string) (*Timeline, error) {
	if epoch.BPM < 1 || epoch.BPM > MaxBPM || epoch.StartBeat < 0 || epoch.StartBeat > maxStartBeat ||
		epoch.StartNs < 0 || epoch.StartNs > maxStartNs {
		return nil, &TimelineError{"out_of_range", "epoch"}
	}
	if bar < 1 || bar > 1024 {
		return nil, &TimelineError{"out_of_range", "bar"}
	}
	if len(phases) < 1 || int64(len(phases)) > bar {
		return nil, &TimelineError{"out_of_range", "phases"}
	}
	for _, p := range phases {
		if len(p) == 0 || len(p) > 64 {
			return nil, &TimelineError{"out_of_range", "phases"}
		}
	}
	t := &Timeline{ClusterID: clusterID, Epoch: epoch, Bar: bar, Phases: append([]string(nil), phases...)}
	if pending != nil {
		if pending.AtBeat <= epoch.StartBeat || pending.AtBeat > maxStartBeat || floorMod(pending.AtBeat, bar) != 0 ||
			pending.BPM < 1 || pending.BPM > MaxBPM {
			return nil, &TimelineError{"out_of_range", "pending"}
		}
		d := new(big.Int).Mul(big.NewInt(pending.AtBeat-epoch.StartBeat), bigMinute)
		d.Div(d, big.NewInt(epoch.BPM)).Add(d, big.NewInt(epoch.StartNs))
		if !d.IsInt64() || d.Int64() < 0 || d.Int64() > maxStartNs {
			return nil, &TimelineError{"out_of_range", "pending instant"}
		}
		at := d.Int64()
		if at < 0 {
			return nil, &TimelineError{"out_of_range", "pending instant"}
		}
		t.Pending = &Epoch{StartBeat: pending.AtBeat, StartNs: at, BPM: pending.BPM}
	}
	return t, nil
}

// TempoChange is a committed change: from downbeat AtBeat on, the timeline runs at BPM.
type TempoChange struct {
	AtBeat int64
	BPM    int64
}

// PendingChange is the committed change still ahead, if any.
func (t *Timeline) PendingChange() *TempoChange {
	if t.Pending == nil {
		return nil
	}
	return &TempoChange{AtBeat: t.Pending.StartBeat, BPM: t.Pending.BPM}
}

// MaxTimelineBytes is the largest timeline message considered.
const MaxTimelineBytes = 64 * 1024

// DecodeTimeline validates a backbeat.timeline.v1 message (a GET /timeline
// body, a reply or a publication) of cluster clusterID. A hostile message is
// refused with a reason, never trusted.
func DecodeTimeline(data []byte, clusterID string) (*Timeline, error) {
	if len(data) > MaxTimelineBytes {
		return nil, &TimelineError{"malformed", "too large"}
	}
	var w struct {
		Type      *string `json:"type"`
		ClusterID *string `json:"cluster_id"`
		Epoch     *struct {
			StartBeat *int64 `json:"start_beat"`
			StartNs   *int64 `json:"start_ns"`
			BPM       *int64 `json:"bpm"`
		} `json:"epoch"`
		Bar     *int64   `json:"bar"`
		Phases  []string `json:"phases"`
		Pending *struct {
			AtBeat *int64 `json:"at_beat"`
			AtNs   *int64 `json:"at_ns"`
			BPM    *int64 `json:"bpm"`
		} `json:"pending"`
		Term     *uint64 `json:"term"`
		Leader   *string `json:"leader"`
		NodeID   *string `json:"node_id"`
		Degraded *bool   `json:"degraded"`
		NowNs    *int64  `json:"now_ns"`
		Error    *string `json:"error"`
		Code     *string `json:"code"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, &TimelineError{"malformed", err.Error()}
	}
	if w.Type == nil && w.Error != nil && w.Code != nil {
		return nil, &TimelineError{*w.Code, *w.Error}
	}
	if w.Type == nil || *w.Type != timelineType {
		return nil, &TimelineError{"wrong_type", ""}
	}
	if w.ClusterID == nil || *w.ClusterID != clusterID {
		got := "<none>"
		if w.ClusterID != nil {
			got = *w.ClusterID
		}
		return nil, &TimelineError{"wrong_cluster", got}
	}
	if w.Epoch == nil || w.Epoch.StartBeat == nil || w.Epoch.StartNs == nil || w.Epoch.BPM == nil ||
		w.Bar == nil || w.Phases == nil {
		return nil, &TimelineError{"malformed", "epoch, bar or phases missing"}
	}
	if w.Term == nil || w.NodeID == nil || w.Degraded == nil || w.NowNs == nil {
		return nil, &TimelineError{"malformed", "term, node_id, degraded or now_ns missing"}
	}
	var change *TempoChange
	if w.Pending != nil {
		if w.Pending.AtBeat == nil || w.Pending.AtNs == nil || w.Pending.BPM == nil {
			return nil, &TimelineError{"malformed", "pending"}
		}
		change = &TempoChange{AtBeat: *w.Pending.AtBeat, BPM: *w.Pending.BPM}
	}
	t, err := NewTimeline(clusterID, Epoch{*w.Epoch.StartBeat, *w.Epoch.StartNs, *w.Epoch.BPM}, change, *w.Bar, w.Phases)
	if err != nil {
		return nil, err
	}
	if change != nil && t.Pending.StartNs != *w.Pending.AtNs {
		return nil, &TimelineError{"out_of_range", fmt.Sprintf("pending at_ns %d is not the instant of beat %d", *w.Pending.AtNs, change.AtBeat)}
	}
	t.Term, t.NodeID, t.Degraded, t.NowNs = *w.Term, *w.NodeID, *w.Degraded, *w.NowNs
	if w.Leader != nil {
		t.Leader = *w.Leader
	}
	return t, nil
}
