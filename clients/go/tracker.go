package backbeat

// EventKind says what an Event reports.
type EventKind string

// The events a consumer hears, in order (the same as the Swift and Python clients).
const (
	EventBeat            EventKind = "beat"             // an accepted frame (degraded ones included)
	EventGap             EventKind = "gap"              // beats that never arrived: First..Last
	EventDegraded        EventKind = "degraded"         // an accepted frame marked degraded
	EventLeaderChanged   EventKind = "leader_changed"   // frames now come from a higher term
	EventTempoChanged    EventKind = "tempo_changed"    // the tempo on the frames changed at AtBeat
	EventTempoScheduled  EventKind = "tempo_scheduled"  // a committed change is ahead (AtBeat, BPM)
	EventTimelineUpdated EventKind = "timeline_updated" // a newer timeline was adopted
	EventRefused         EventKind = "refused"          // a frame or timeline refused: Reason
	EventMismatch        EventKind = "mismatch"         // a frame disagrees with the timeline on Field
	EventConnection      EventKind = "connection"       // the NATS link went down (Up false) or came back
)

// Event is one thing a consumer hears. Which fields are set depends on Kind.
type Event struct {
	Kind         EventKind
	Frame        *Frame // beat, degraded, mismatch
	ReceivedNs   int64  // beat, degraded: arrival on the timeline's clock
	InstantNs    int64  // beat: the beat's instant (from the timeline when known)
	First, Last  int64  // gap
	Term         uint64 // leader_changed, timeline_updated
	PreviousTerm uint64 // leader_changed
	Publisher    string // leader_changed: the new publisher's node-id suffix
	BPM          int64  // tempo_changed, tempo_scheduled
	PreviousBPM  int64  // tempo_changed
	AtBeat       int64  // tempo_changed, tempo_scheduled
	Reason       string // refused
	Field        string // mismatch
	Timeline     *Timeline
	Up           bool // connection
}

// FrameTracker judges frames for one consumer: cluster check, term fence,
// bounds against the timeline, dedupe, gaps, leader and tempo changes. Pure:
// no clock, no I/O; not safe for concurrent use by itself.
//
// One message cannot move a consumer (issue 20): a frame is believed no
// further than the pulse's echo policy believes one, a frame that disagrees
// with the timeline is a mismatch (not a beat), and the fence rises only with
// a confirmed timeline (NoteTimeline: a reply to the client's own request),
// never with a frame's own term; after repeated stale refusals a confirmed
// timeline sets it (docs/protocol.md).
type FrameTracker struct {
	ClusterID     string
	LastIndex     int64  // the highest index accepted, or -1
	FenceTerm     uint64 // the highest confirmed term: frames below it are refused (stale_term)
	StaleInARow   int    // stale_term refusals since the last accepted frame
	LastFrameTerm uint64
	LastBPM       int64
	Duplicates    uint64
	Refused       uint64
	Accepted      uint64
}

// NewFrameTracker starts a tracker for cluster clusterID.
func NewFrameTracker(clusterID string) *FrameTracker {
	return &FrameTracker{ClusterID: clusterID, LastIndex: -1}
}

// refetchReasons are refusals that mean the local timeline may be out of date.
var refetchReasons = map[string]bool{"term_ahead": true, "index_ahead": true, "index_behind": true}

// StaleRefusalsBeforeRecheck is how many stale_term refusals in a row make
// the next confirmed timeline set the fence instead of raising it.
const StaleRefusalsBeforeRecheck = 2

// NeedsConfirmation says the client should request the timeline: the last
// accepted frame claimed a term above the fence, or stale refusals repeat.
func (tr *FrameTracker) NeedsConfirmation() bool {
	return tr.LastFrameTerm > tr.FenceTerm || tr.StaleInARow >= StaleRefusalsBeforeRecheck
}

// NoteTimeline takes a confirmed timeline (a reply to the client's own
// request, never a publication): its term raises the fence, or after
// repeated stale refusals sets it, so a fence above the cluster's term heals.
func (tr *FrameTracker) NoteTimeline(t *Timeline) {
	if tr.StaleInARow >= StaleRefusalsBeforeRecheck {
		tr.FenceTerm = t.Term
		tr.StaleInARow = 0
	} else if t.Term > tr.FenceTerm {
		tr.FenceTerm = t.Term
	}
}

// Adopt weighs a confirmed timeline (a reply to the client's own request,
// never a publication) against the one held: adopted unless older
// (a lagging node never rolls a committed change back); its term raises the
// fence either way. It returns the timeline to hold and the events.
func (tr *FrameTracker) Adopt(t, held *Timeline) (*Timeline, []Event) {
	tr.NoteTimeline(t)
	if held != nil && (olderVersion(t.Version(), held.Version()) || t.equal(held)) {
		return held, nil
	}
	var events []Event
	if p := t.PendingChange(); p != nil {
		if hp := (*TempoChange)(nil); held != nil {
			hp = held.PendingChange()
			if hp == nil || *hp != *p {
				events = append(events, Event{Kind: EventTempoScheduled, AtBeat: p.AtBeat, BPM: p.BPM})
			}
		} else {
			events = append(events, Event{Kind: EventTempoScheduled, AtBeat: p.AtBeat, BPM: p.BPM})
		}
	}
	return t, append(events, Event{Kind: EventTimelineUpdated, Term: t.Term, Timeline: t})
}

func (tr *FrameTracker) refuse(reason string) []Event {
	tr.Refused++
	return []Event{{Kind: EventRefused, Reason: reason}}
}

// Receive judges one message from the beat subject, received at receivedNs
// (timeline clock), against t when known (nil before the first timeline).
func (tr *FrameTracker) Receive(data []byte, receivedNs int64, t *Timeline) []Event {
	f, err := DecodeFrame(data)
	if err != nil {
		return tr.refuse(err.(*FrameError).Reason)
	}
	if f.ClusterID != tr.ClusterID {
		return tr.refuse("wrong_cluster")
	}
	// Fencing: a frame from an older term than one already seen is from a deposed publisher.
	if f.Term < tr.FenceTerm {
		tr.StaleInARow++
		return tr.refuse("stale_term")
	}
	if t != nil {
		// Bounds that keep one hostile frame from fencing the consumer out.
		if ceiling := t.Term + MaxTermLead; ceiling >= t.Term && f.Term > ceiling {
			return tr.refuse("term_ahead")
		}
		current := t.BeatAt(receivedNs)
		if f.BeatIndex > current+1 {
			return tr.refuse("index_ahead")
		}
		if f.BeatIndex < current-MaxBeatsLate {
			return tr.refuse("index_behind")
		}
	} else {
		// No timeline yet: only the frame's own deadline, near the arrival.
		scheduled, ok := f.ScheduledNs()
		if !ok {
			return tr.refuse("far_from_now")
		}
		d := scheduled - receivedNs
		if (scheduled >= 0) != (receivedNs >= 0) && (d >= 0) != (scheduled >= 0) { // overflow
			return tr.refuse("far_from_now")
		}
		if d <= -60_000_000_000 || d >= 60_000_000_000 {
			return tr.refuse("far_from_now")
		}
	}
	// A frame that contradicts the timeline is not a beat (a forged phase or
	// downbeat, or a timeline not confirmed yet: the client fetches it).
	frame := f
	if t != nil {
		if field := Disagreement(&frame, t); field != "" {
			tr.Refused++
			return []Event{{Kind: EventMismatch, Frame: &frame, Field: field}}
		}
	}
	// Duplicates (redelivery, a degraded node racing the leader): the first one counts.
	if f.BeatIndex <= tr.LastIndex {
		tr.Duplicates++
		return nil
	}
	var events []Event
	instant := receivedNs
	if t != nil {
		instant = t.InstantNs(f.BeatIndex)
	} else if s, ok := f.ScheduledNs(); ok {
		instant = s
	}
	if tr.LastIndex >= 0 && f.BeatIndex > tr.LastIndex+1 {
		events = append(events, Event{Kind: EventGap, First: tr.LastIndex + 1, Last: f.BeatIndex - 1})
	}
	if tr.LastFrameTerm != 0 && f.Term > tr.LastFrameTerm {
		events = append(events, Event{Kind: EventLeaderChanged, Term: f.Term, PreviousTerm: tr.LastFrameTerm,
			Publisher: f.Publisher})
	}
	if tr.LastBPM != 0 && f.TempoBPM != tr.LastBPM {
		events = append(events, Event{Kind: EventTempoChanged, BPM: f.TempoBPM, PreviousBPM: tr.LastBPM,
			AtBeat: f.BeatIndex})
	}
	events = append(events, Event{Kind: EventBeat, Frame: &frame, ReceivedNs: receivedNs, InstantNs: instant})
	if f.Degraded {
		events = append(events, Event{Kind: EventDegraded, Frame: &frame, ReceivedNs: receivedNs, InstantNs: instant})
	}
	tr.LastIndex = f.BeatIndex
	tr.LastFrameTerm = f.Term
	tr.StaleInARow = 0
	tr.LastBPM = f.TempoBPM
	tr.Accepted++
	return events
}

// Disagreement is the first field on which f differs from what t says of its
// beat ("" when it agrees): downbeat, phase, tempo_bpm, deadline_at, window_id.
func Disagreement(f *Frame, t *Timeline) string {
	k := f.BeatIndex
	switch {
	case f.Downbeat != t.IsDownbeat(k):
		return "downbeat"
	case f.Phase != t.PhaseOf(k):
		return "phase"
	case f.TempoBPM != t.BPMOf(k):
		return "tempo_bpm"
	case f.DeadlineMs != floorDiv(t.InstantNs(k+1), 1_000_000):
		return "deadline_at"
	case f.WindowID != t.WindowIDOf(k):
		return "window_id"
	}
	return ""
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b < 0 {
		q--
	}
	return q
}
