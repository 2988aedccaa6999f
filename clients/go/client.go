package backbeat

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Options say how to reach a cluster.
type Options struct {
	// Servers are NATS URLs (a server list; user:password@ or token@ may be in a URL).
	Servers []string
	// Cluster is the pulse's -cluster (default "chorus-aus-01").
	Cluster string
	// CredentialsFile is a NATS credentials file (JWT + nkey seed).
	CredentialsFile string
	// NKeySeedFile is a file holding an nkey user seed (SU...), for servers with nkey users.
	NKeySeedFile string
	// User and Password, or Token, for servers with plain authorization.
	User, Password, Token string
	// CAFile is a CA bundle for TLS to the server; CertFile and KeyFile a client certificate.
	CAFile, CertFile, KeyFile string
	// TLSConfig is used as is when set (instead of CAFile, CertFile, KeyFile).
	TLSConfig *tls.Config
	// Name is the connection name the server shows (default "backbeat-go").
	Name string
	// ConnectTimeout bounds Connect: reaching NATS and the first timeline (default 5 s).
	ConnectTimeout time.Duration
	// RequestTimeout bounds one timeline or tempo request (default 2 s).
	RequestTimeout time.Duration
	// ClockSampleInterval is how often the clock offset is sampled (default 2 s; < 0 turns it off).
	ClockSampleInterval time.Duration
	// EventBuffer is how many events are kept for a slow reader (default 4096; the newest are dropped beyond it).
	EventBuffer int
	// LocalClock reads the local wall clock in Unix ns (default time.Now; tests inject a skewed one).
	LocalClock func() int64
	// PublicKeys are the cluster's publication keys (-sign-key; old and new
	// during a rotation). When set, only signed frames, timeline replies and
	// publications are accepted; others are refused (RefusedUnsigned,
	// RefusedUnknownKey, RefusedBadSignature) and counted (SignatureRefusals).
	PublicKeys []ed25519.PublicKey
}

func (o *Options) defaults() {
	if o.Cluster == "" {
		o.Cluster = "chorus-aus-01"
	}
	if o.Name == "" {
		o.Name = "backbeat-go"
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 2 * time.Second
	}
	if o.ClockSampleInterval == 0 {
		o.ClockSampleInterval = 2 * time.Second
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = 4096
	}
	if o.LocalClock == nil {
		o.LocalClock = func() int64 { return time.Now().UnixNano() }
	}
}

// The cluster's subjects (docs/protocol.md "Subjects"): the leader publishes
// frames on beat and timeline publications on timeline; a consumer asks on the
// request subjects, the only ones the shipped NATS permissions let it publish on.
func (o *Options) beatSubject() string     { return "backbeat." + o.Cluster + ".beat" }
func (o *Options) timelineSubject() string { return "backbeat." + o.Cluster + ".timeline" }

// TimelineRequestSubject is where a consumer asks for the timeline.
func (o *Options) TimelineRequestSubject() string {
	return "backbeat." + o.Cluster + ".request.timeline"
}

// ControlRequestSubject is where a tool asks for a tempo change.
func (o *Options) ControlRequestSubject() string { return "backbeat." + o.Cluster + ".request.control" }

// ConnectError is Connect's one error: which server, which subject, how long
// it waited (and was willing to), and the last cause.
type ConnectError struct {
	Server  string
	Subject string // "" when NATS itself was not reachable
	Waited  time.Duration
	Timeout time.Duration
	Cause   string
}

func (e *ConnectError) Error() string {
	if e.Subject == "" {
		return fmt.Sprintf("backbeat: no NATS server reachable at %s within %v (waited %v): %s", e.Server, e.Timeout,
			e.Waited, e.Cause)
	}
	return fmt.Sprintf("backbeat: no pulse answered on %s via %s within %v (waited %v; last: %s)", e.Subject,
		e.Server, e.Timeout, e.Waited, e.Cause)
}

// ErrNoTimeline is returned by the local answers before a timeline is known.
var ErrNoTimeline = errors.New("backbeat: no timeline yet")

// Client is a consumer of one cluster's beat. Create with Connect; Close when done.
type Client struct {
	opts   Options
	nc     *nats.Conn
	subs   []*nats.Subscription
	events chan Event

	mu        sync.Mutex
	timeline  *Timeline
	tracker   *FrameTracker
	clock     clockEstimator
	delivery  []int64
	dropped   uint64
	refetchCh chan struct{}
	// claim is what a timeline publication claimed (version, term) that no
	// reply has confirmed yet; nil when none (issue 20: publications are hints).
	claim     *timelineClaim
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	// verifier checks signatures (nil: Options.PublicKeys empty); sigRefused counts refusals.
	verifier   *Verifier
	sigRefused uint64
}

// Connect reaches NATS, subscribes to the beat and timeline subjects and
// fetches the timeline, all within opts.ConnectTimeout; if no pulse answers
// it fails with one *ConnectError naming the server, the subject and the wait.
func Connect(opts Options) (*Client, error) {
	opts.defaults()
	started := time.Now()
	servers := strings.Join(opts.Servers, ",")
	natsOpts, err := opts.natsOptions()
	if err != nil {
		return nil, &ConnectError{Server: servers, Timeout: opts.ConnectTimeout, Cause: err.Error()}
	}
	deadline := started.Add(opts.ConnectTimeout)
	waited := func() time.Duration { return time.Since(started).Round(time.Millisecond) }
	c := &Client{
		opts: opts, events: make(chan Event, opts.EventBuffer), tracker: NewFrameTracker(opts.Cluster),
		refetchCh: make(chan struct{}, 1), done: make(chan struct{}),
	}
	if len(opts.PublicKeys) > 0 {
		if c.verifier, err = NewVerifier(opts.PublicKeys...); err != nil {
			return nil, &ConnectError{Server: servers, Timeout: opts.ConnectTimeout, Cause: err.Error()}
		}
	}
	natsOpts = append(natsOpts,
		nats.DisconnectErrHandler(func(*nats.Conn, error) { c.emit(Event{Kind: EventConnection, Up: false}) }),
		nats.ReconnectHandler(func(*nats.Conn) {
			c.emit(Event{Kind: EventConnection, Up: true})
			c.refetch()
		}))
	// NATS itself, retried until the deadline (a server restarting is not a failure yet).
	var nc *nats.Conn
	for {
		left := time.Until(deadline)
		nc, err = nats.Connect(servers, append(natsOpts, nats.Timeout(maxDuration(left, time.Millisecond)))...)
		if err == nil {
			break
		}
		if time.Until(deadline) <= 0 || errors.Is(err, nats.ErrAuthorization) {
			return nil, &ConnectError{Server: servers, Timeout: opts.ConnectTimeout, Waited: waited(), Cause: err.Error()}
		}
		time.Sleep(minDuration(250*time.Millisecond, time.Until(deadline)))
	}
	c.nc = nc
	// The first timeline, retried until the connect deadline.
	last := errors.New("no time left to ask")
	for remaining := time.Until(deadline); remaining > 0; remaining = time.Until(deadline) {
		if _, last = c.fetch(minDuration(opts.RequestTimeout, remaining)); last == nil {
			break
		}
		if !errors.Is(last, nats.ErrTimeout) {
			// No responders, or a node without a committed timeline yet: ask again shortly.
			time.Sleep(minDuration(100*time.Millisecond, time.Until(deadline)))
		}
	}
	if last != nil {
		server := nc.ConnectedUrl()
		nc.Close()
		return nil, &ConnectError{Server: server, Subject: opts.TimelineRequestSubject(), Timeout: opts.ConnectTimeout,
			Waited: waited(), Cause: last.Error()}
	}
	// Subscribed once the timeline (and the clock offset) is known: every
	// frame is judged against it (NATS answers the requests above with "no
	// responders" at once while no pulse listens).
	for subject, handler := range map[string]nats.MsgHandler{
		opts.beatSubject(): c.onBeat, opts.timelineSubject(): c.onTimeline,
	} {
		sub, err := nc.Subscribe(subject, handler)
		if err != nil {
			nc.Close()
			return nil, &ConnectError{Server: nc.ConnectedUrl(), Subject: subject, Timeout: opts.ConnectTimeout,
				Waited: waited(), Cause: err.Error()}
		}
		_ = sub.SetPendingLimits(65536, 64<<20)
		c.subs = append(c.subs, sub)
	}
	_ = nc.FlushTimeout(maxDuration(time.Until(deadline), 100*time.Millisecond)) // subscribed at the server on return
	c.wg.Add(1)
	go c.background()
	return c, nil
}

func maxDuration(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

func minDuration(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

func (o *Options) natsOptions() ([]nats.Option, error) {
	out := []nats.Option{
		nats.Name(o.Name), nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond), nats.RetryOnFailedConnect(false),
	}
	if o.CredentialsFile != "" {
		out = append(out, nats.UserCredentials(o.CredentialsFile))
	}
	if o.NKeySeedFile != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nkey seed %s: %w", o.NKeySeedFile, err)
		}
		out = append(out, opt)
	}
	if o.User != "" {
		out = append(out, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		out = append(out, nats.Token(o.Token))
	}
	if o.TLSConfig != nil {
		out = append(out, nats.Secure(o.TLSConfig))
	} else if o.CAFile != "" || o.CertFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("no certificate in %s", o.CAFile)
			}
			cfg.RootCAs = pool
		}
		if o.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
			if err != nil {
				return nil, err
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		out = append(out, nats.Secure(cfg))
	}
	return out, nil
}

// NKeyPublic is the public key (U...) of an nkey user seed file, for the server's configuration.
func NKeyPublic(seedFile string) (string, error) {
	seed, err := os.ReadFile(seedFile)
	if err != nil {
		return "", err
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return "", err
	}
	return kp.PublicKey()
}

// Close unsubscribes, closes the connection and the Events channel. Idempotent.
func (c *Client) Close() {
	c.closeOnce.Do(func() {
		close(c.done)
		for _, s := range c.subs {
			_ = s.Unsubscribe()
		}
		c.nc.Close()
		c.wg.Wait()
		c.mu.Lock()
		close(c.events)
		c.events = nil
		c.mu.Unlock()
	})
}

// Events delivers every event in order; closed by Close. Read it: when its
// buffer is full, newer events are dropped (counted by Dropped).
func (c *Client) Events() <-chan Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.events
}

func (c *Client) emit(e Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.emitLocked(e)
}

func (c *Client) emitLocked(e Event) {
	if c.events == nil {
		return
	}
	select {
	case c.events <- e:
	default:
		c.dropped++
	}
}

// Conn is the underlying NATS connection (for its statistics; do not close it).
func (c *Client) Conn() *nats.Conn { return c.nc }

// fetch asks for the timeline once and adopts the answer.
func (c *Client) fetch(timeout time.Duration) (*Timeline, error) {
	sent := c.opts.LocalClock()
	msg, err := c.nc.Request(c.opts.TimelineRequestSubject(), []byte("{}"), timeout)
	answered := c.opts.LocalClock()
	if err != nil {
		return nil, err
	}
	if reason := c.signatureRefusal(msg.Data); reason != "" {
		return nil, &TimelineError{Reason: reason}
	}
	t, err := DecodeTimeline(msg.Data, c.opts.Cluster)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.clock.add(sent, answered, t.NowNs)
	held, events := c.tracker.Adopt(t, c.timeline)
	c.timeline = held
	for _, e := range events {
		c.emitLocked(e)
	}
	c.mu.Unlock()
	return held, nil
}

// FetchTimeline asks the cluster for its timeline (one round trip) and adopts
// it unless the one held is newer; it returns the timeline held afterwards.
func (c *Client) FetchTimeline(ctx context.Context) (*Timeline, error) {
	timeout := c.opts.RequestTimeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = time.Until(d)
	}
	return c.fetch(timeout)
}

// timelineClaim is a publication's (version, term), to be confirmed by a reply.
type timelineClaim struct {
	version [2]int64
	term    uint64
}

// Re-checks (timeline requests caused by frames or publications) run at
// least recheckInterval apart; a claim the answer does not meet yet is asked
// again up to claimFollowUps times, claimFollowUpInterval apart.
const (
	recheckInterval       = 200 * time.Millisecond
	claimFollowUps        = 4
	claimFollowUpInterval = 50 * time.Millisecond
)

// claimUnmetLocked says the timeline held is older than the claim (c.mu held).
func (c *Client) claimUnmetLocked() bool {
	if c.claim == nil {
		return false
	}
	if c.timeline == nil {
		return true
	}
	return olderVersion(c.timeline.Version(), c.claim.version) || c.timeline.Term < c.claim.term
}

func (c *Client) refetch() {
	select {
	case c.refetchCh <- struct{}{}:
	default:
	}
}

// background refetches the timeline when asked (a mismatch, a leader change,
// a reconnect) and samples the clock offset every ClockSampleInterval.
func (c *Client) background() {
	defer c.wg.Done()
	var tick <-chan time.Time
	if c.opts.ClockSampleInterval > 0 {
		ticker := time.NewTicker(c.opts.ClockSampleInterval)
		defer ticker.Stop()
		tick = ticker.C
	}
	var last time.Time
	for {
		select {
		case <-c.done:
			return
		case <-tick:
		case <-c.refetchCh:
			if wait := recheckInterval - time.Since(last); wait > 0 {
				select {
				case <-c.done:
					return
				case <-time.After(wait):
				}
			}
		}
		followUps := 0
		for attempt := 0; attempt < 30; attempt++ {
			last = time.Now()
			_, err := c.fetch(c.opts.RequestTimeout)
			if err == nil {
				c.mu.Lock()
				chase := c.claimUnmetLocked() && followUps < claimFollowUps
				if !chase {
					c.claim = nil
				}
				c.mu.Unlock()
				if !chase {
					break
				}
				followUps++
				select {
				case <-c.done:
					return
				case <-time.After(claimFollowUpInterval):
				}
				continue
			}
			if c.nc.IsClosed() {
				break
			}
			select {
			case <-c.done:
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// signatureRefusal is why data is refused under Options.PublicKeys (counted), or "".
func (c *Client) signatureRefusal(data []byte) string {
	if c.verifier == nil {
		return ""
	}
	reason := c.verifier.Check(data)
	if reason != "" {
		c.mu.Lock()
		c.sigRefused++
		c.mu.Unlock()
	}
	return reason
}

// SignatureRefusals counts frames, timeline replies and publications refused
// for their signature (Options.PublicKeys).
func (c *Client) SignatureRefusals() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sigRefused
}

func (c *Client) onBeat(msg *nats.Msg) {
	local := c.opts.LocalClock()
	if reason := c.signatureRefusal(msg.Data); reason != "" {
		c.emit(Event{Kind: EventRefused, Reason: reason})
		return
	}
	c.mu.Lock()
	received := local + c.clock.offsetNs
	t := c.timeline
	events := c.tracker.Receive(msg.Data, received, t)
	refetch := t == nil
	for _, e := range events {
		switch {
		case e.Kind == EventBeat && t != nil:
			c.delivery = append(c.delivery, received-e.InstantNs)
			if len(c.delivery) > 64 {
				c.delivery = c.delivery[1:]
			}
		case e.Kind == EventMismatch || e.Kind == EventLeaderChanged:
			refetch = true
		case e.Kind == EventRefused && refetchReasons[e.Reason]:
			refetch = true
		}
		c.emitLocked(e)
	}
	refetch = refetch || c.tracker.NeedsConfirmation()
	c.mu.Unlock()
	if refetch {
		c.refetch()
	}
}

func (c *Client) onTimeline(msg *nats.Msg) {
	if msg.Reply != "" {
		return // a request (ours or another consumer's), not a publication
	}
	if reason := c.signatureRefusal(msg.Data); reason != "" {
		c.emit(Event{Kind: EventRefused, Reason: "timeline_" + reason})
		return
	}
	t, err := DecodeTimeline(msg.Data, c.opts.Cluster)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.emitLocked(Event{Kind: EventRefused, Reason: "timeline_" + err.(*TimelineError).Reason})
		return
	}
	// A publication: the leader's, or anyone's who may publish here. What it
	// claims newer is confirmed by a request (the reply) before anything changes.
	if held := c.timeline; held != nil && !olderVersion(held.Version(), t.Version()) && t.Term <= held.Term {
		return
	}
	claim := timelineClaim{version: t.Version(), term: t.Term}
	if c.claim != nil {
		if olderVersion(claim.version, c.claim.version) {
			claim.version = c.claim.version
		}
		if c.claim.term > claim.term {
			claim.term = c.claim.term
		}
	}
	c.claim = &claim
	c.refetch()
}

// Timeline is the timeline held (nil before the first answer).
func (c *Client) Timeline() *Timeline {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.timeline
}

// Now is the timeline's clock: the local clock plus the estimated offset, Unix ns.
func (c *Client) Now() int64 {
	c.mu.Lock()
	offset := c.clock.offsetNs
	c.mu.Unlock()
	return c.opts.LocalClock() + offset
}

// ClockOffset is the timeline clock minus the local clock (ns) and its error
// bound: the true offset is within offset ± bound (half the round trip of the
// sample used, plus 200 ppm drift since it was taken). ok is false before any sample.
func (c *Client) ClockOffset() (offsetNs, boundNs int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clock.estimate(c.opts.LocalClock())
}

// ClockSamples is how many clock samples were taken since Connect.
func (c *Client) ClockSamples() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clock.taken
}

// DeliveryOffset is the median arrival minus instant of the last frames (ok false before any).
func (c *Client) DeliveryOffset() (ns int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.delivery) == 0 {
		return 0, false
	}
	s := append([]int64(nil), c.delivery...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], true
}

// Counts are the frame counters: accepted, duplicates dropped, refused.
func (c *Client) Counts() (accepted, duplicates, refused uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tracker.Accepted, c.tracker.Duplicates, c.tracker.Refused
}

// Dropped is how many events were dropped because Events was not read.
func (c *Client) Dropped() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

func (c *Client) current() (*Timeline, int64, error) {
	t := c.Timeline()
	if t == nil {
		return nil, 0, ErrNoTimeline
	}
	return t, c.Now(), nil
}

// Beat is the beat in progress now.
func (c *Client) Beat() (BeatInfo, error) {
	t, now, err := c.current()
	if err != nil {
		return BeatInfo{}, err
	}
	return t.InfoAt(now), nil
}

// Phase is the phase in progress now.
func (c *Client) Phase() (string, error) {
	b, err := c.Beat()
	return b.Phase, err
}

// WindowID is the window in progress now.
func (c *Client) WindowID() (string, error) {
	b, err := c.Beat()
	return b.WindowID, err
}

// NextDownbeat is the first downbeat after now.
func (c *Client) NextDownbeat() (BeatInfo, error) {
	t, now, err := c.current()
	if err != nil {
		return BeatInfo{}, err
	}
	return t.NextDownbeat(now), nil
}

// Position is the fractional position at ns (timeline clock): the beat in progress and how far into it.
func (c *Client) Position(ns int64) (BeatPosition, error) {
	t := c.Timeline()
	if t == nil {
		return BeatPosition{}, ErrNoTimeline
	}
	return t.Position(ns), nil
}

// BeatAtTime is the position at ns as one number of beats (Ableton Link's beatAtTime).
func (c *Client) BeatAtTime(ns int64) (float64, error) {
	p, err := c.Position(ns)
	return p.Beats(), err
}

// PhaseAtTime is the position at ns within a cycle of quantum beats, in [0, quantum) (Link's phaseAtTime).
func (c *Client) PhaseAtTime(ns int64, quantum int64) (float64, error) {
	p, err := c.Position(ns)
	return p.Phase(quantum), err
}

// WaitForNextDownbeat sleeps until the next downbeat's instant (timeline
// clock) and returns it; a tempo change meanwhile moves the same beat's instant.
func (c *Client) WaitForNextDownbeat(ctx context.Context) (BeatInfo, error) {
	goal, err := c.NextDownbeat()
	if err != nil {
		return goal, err
	}
	for {
		remaining := time.Duration(goal.InstantNs - c.Now())
		if remaining <= 0 {
			return goal, nil
		}
		if remaining > 50*time.Millisecond {
			remaining = 50 * time.Millisecond // short naps, so a late timeline update still counts
		}
		timer := time.NewTimer(remaining)
		select {
		case <-ctx.Done():
			timer.Stop()
			return goal, ctx.Err()
		case <-c.done:
			timer.Stop()
			return goal, errors.New("backbeat: client closed")
		case <-timer.C:
		}
		if t := c.Timeline(); t != nil {
			goal = t.Info(goal.Index)
		}
	}
}

// TempoScheduled is the cluster's answer to an accepted tempo request.
type TempoScheduled struct {
	TempoBPM      int64  `json:"tempo_bpm"`
	PreviousBPM   int64  `json:"previous_bpm"`
	ApplyAtBeat   int64  `json:"apply_at_beat"`
	ApplyAt       string `json:"apply_at"`
	Justification string `json:"justification"`
}

// RefusalError is the cluster's refusal of a tempo request, unchanged: the
// HTTP status it stands for, the machine code and the sentence.
type RefusalError struct {
	Status  int
	Code    string
	Message string
}

func (e *RefusalError) Error() string {
	return fmt.Sprintf("backbeat: tempo refused: %d %s: %s", e.Status, e.Code, e.Message)
}

// RequestTempo asks the cluster to change the tempo (request/reply on the
// control request subject; the leader answers). It returns the scheduled change, or
// a *RefusalError carrying the API's status and code unchanged. token is the
// admin token when the cluster has one ("" otherwise).
func (c *Client) RequestTempo(ctx context.Context, bpm int64, justification, token string) (TempoScheduled, error) {
	body := map[string]interface{}{"tempo_bpm": bpm, "justification": justification}
	if token != "" {
		body["token"] = token
	}
	data, err := json.Marshal(body)
	if err != nil {
		return TempoScheduled{}, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.RequestTimeout)
		defer cancel()
	}
	msg, err := c.nc.RequestWithContext(ctx, c.opts.ControlRequestSubject(), data)
	if err != nil {
		return TempoScheduled{}, fmt.Errorf("backbeat: tempo request on %s: %w", c.opts.ControlRequestSubject(), err)
	}
	var reply struct {
		Status int    `json:"status"`
		Error  string `json:"error"`
		Code   string `json:"code"`
		TempoScheduled
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return TempoScheduled{}, fmt.Errorf("backbeat: tempo reply not understood: %w", err)
	}
	if reply.Code != "" || reply.Status != 202 {
		return TempoScheduled{}, &RefusalError{Status: reply.Status, Code: reply.Code, Message: reply.Error}
	}
	return reply.TempoScheduled, nil
}

// clockEstimator keeps the offset from timeline replies: for a reply stamped
// serverNs between local sent and answered, the true offset is within
// serverNs - answered ... serverNs - sent; the sample with the smallest round
// trip of the last 8 is used (the filter the node's own ClockSync starts from).
type clockEstimator struct {
	taken    int
	samples  []clockSample
	best     clockSample
	offsetNs int64
}

type clockSample struct{ rttNs, offsetNs, takenNs int64 }

// driftPerSecondNs is the drift allowed between two clocks (200 ppm).
const driftPerSecondNs = 200_000

func (e *clockEstimator) add(sent, answered, serverNs int64) {
	rtt := answered - sent
	if rtt < 0 || rtt >= 10_000_000_000 || serverNs <= 0 {
		return
	}
	offset := serverNs - (sent + rtt/2)
	if offset <= -60_000_000_000 || offset >= 60_000_000_000 {
		return // a node's clock more than a minute off is not believed
	}
	e.taken++
	e.samples = append(e.samples, clockSample{rtt, offset, answered})
	if len(e.samples) > 8 {
		e.samples = e.samples[1:]
	}
	e.best = e.samples[0]
	for _, s := range e.samples[1:] {
		if s.rttNs <= e.best.rttNs {
			e.best = s
		}
	}
	e.offsetNs = e.best.offsetNs
}

// estimate is the offset and its bound at local time now: half the best
// sample's round trip (rounded up) plus the drift allowed since it was taken
// (at least one second's worth).
func (e *clockEstimator) estimate(now int64) (offset, bound int64, ok bool) {
	if len(e.samples) == 0 {
		return 0, 0, false
	}
	age := now - e.best.takenNs
	if age < 0 {
		age = 0
	}
	return e.best.offsetNs, (e.best.rttNs+1)/2 + (age/1_000_000_000+1)*driftPerSecondNs, true
}
