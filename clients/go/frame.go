package backbeat

import (
	"unicode/utf8"
)

// Frame is a backbeat.beatframe.v1 frame that passed every check of the decoder.
type Frame struct {
	ClusterID  string
	BeatIndex  int64
	Downbeat   bool
	Phase      string
	HLCMs      int64
	HLCCounter uint32
	Publisher  string // the HLC suffix: the last 4 characters of the publisher's node id
	DeadlineMs int64  // deadline_at, Unix ms
	TempoBPM   int64
	WindowID   string
	Term       uint64
	Degraded   bool
}

// ScheduledNs is the instant as the frame states it: deadline minus one
// nominal period; ok is false if it would overflow.
func (f *Frame) ScheduledNs() (ns int64, ok bool) {
	if f.DeadlineMs > (1<<63-1)/1_000_000 || f.DeadlineMs < -(1<<63-1)/1_000_000 {
		return 0, false
	}
	return f.DeadlineMs*1_000_000 - nsPerMinute/f.TempoBPM, true
}

// FrameError is a refused frame; Reason is the code PulseCore's
// BeatFrameDecoder gives (empty, too_large, malformed_json, not_an_object,
// too_deep, wrong_type, missing_field, duplicate_field, bad_<field>).
type FrameError struct{ Reason string }

func (e *FrameError) Error() string { return "frame refused: " + e.Reason }

const (
	// MaxFrameBytes is the largest payload considered.
	MaxFrameBytes  = 4096
	maxDepth       = 16
	maxStringBytes = 256
	frameType      = "backbeat.beatframe.v1"
)

var frameFields = []string{"type", "cluster_id", "beat_index", "downbeat", "phase", "hlc", "deadline_at", "tempo_bpm",
	"window_id", "term"}

// DecodeFrame validates one frame: a port of PulseCore's BeatFrameDecoder,
// one pass over the bytes where the first fault in the text decides the
// reason (docs/vectors/frames.json holds the cases all decoders agree on).
func DecodeFrame(data []byte) (f Frame, err error) {
	if len(data) > MaxFrameBytes {
		return f, &FrameError{"too_large"}
	}
	defer func() {
		if r := recover(); r != nil {
			fe, ok := r.(*FrameError)
			if !ok {
				panic(r)
			}
			f, err = Frame{}, fe
		}
	}()
	p := parser{b: data}
	return p.frame(), nil
}

type parser struct {
	b []byte
	i int
}

func fail(reason string) { panic(&FrameError{reason}) }

func (p *parser) peek() int {
	if p.i < len(p.b) {
		return int(p.b[p.i])
	}
	return -1
}

func (p *parser) ws() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\n' || p.b[p.i] == '\r') {
		p.i++
	}
}

func (p *parser) expect(c byte) {
	if p.peek() != int(c) {
		fail("malformed_json")
	}
	p.i++
}

func (p *parser) frame() Frame {
	p.ws()
	first := p.peek()
	if first < 0 {
		fail("empty")
	}
	if first != '{' {
		p.skipValue(0)
		p.ws()
		if p.peek() < 0 {
			fail("not_an_object")
		}
		fail("malformed_json")
	}
	p.i++
	var f Frame
	seen := map[string]bool{}
	p.ws()
	if p.peek() == '}' {
		p.i++
	} else {
		for {
			p.ws()
			key := p.str()
			p.ws()
			p.expect(':')
			p.ws()
			p.field(key, seen, &f)
			p.ws()
			if p.peek() == ',' {
				p.i++
				continue
			}
			p.expect('}')
			break
		}
	}
	p.ws()
	if p.peek() >= 0 {
		fail("malformed_json")
	}
	for _, name := range frameFields {
		if !seen[name] {
			fail("missing_field")
		}
	}
	return f
}

func (p *parser) field(key []byte, seen map[string]bool, f *Frame) {
	name := string(key)
	if !utf8.Valid(key) || (name != "degraded" && !contains(frameFields, name)) {
		p.skipValue(1)
		return
	}
	if seen[name] {
		fail("duplicate_field")
	}
	seen[name] = true
	bad := "bad_" + name
	switch name {
	case "type":
		if p.peek() != '"' || p.stringValue(name) != frameType {
			fail("wrong_type")
		}
	case "cluster_id":
		t := p.stringValue(name)
		if len(t) == 0 || len(t) > 128 {
			fail(bad)
		}
		f.ClusterID = t
	case "beat_index":
		neg, m := p.integer(name)
		if neg || m > 1<<63-1 {
			fail(bad)
		}
		f.BeatIndex = int64(m)
	case "downbeat":
		f.Downbeat = p.boolean(name)
	case "degraded":
		f.Degraded = p.boolean(name)
	case "phase":
		t := p.stringValue(name)
		if len(t) == 0 {
			fail(bad)
		}
		f.Phase = t
	case "hlc":
		ms, counter, suffix, ok := parseHLC(p.stringValue(name))
		if !ok || suffix == "" {
			fail(bad)
		}
		f.HLCMs, f.HLCCounter, f.Publisher = ms, counter, suffix
	case "deadline_at":
		ms, ok := unixMs(p.stringValue(name))
		if !ok {
			fail(bad)
		}
		f.DeadlineMs = ms
	case "tempo_bpm":
		neg, m := p.integer(name)
		if neg || m < 1 || m > MaxBPM {
			fail(bad)
		}
		f.TempoBPM = int64(m)
	case "window_id":
		t := p.stringValue(name)
		if len(t) != 32 {
			fail(bad)
		}
		for i := 0; i < len(t); i++ {
			if !(t[i] >= '0' && t[i] <= '9' || t[i] >= 'a' && t[i] <= 'f') {
				fail(bad)
			}
		}
		f.WindowID = t
	case "term":
		neg, m := p.integer(name)
		if neg {
			fail(bad)
		}
		f.Term = m
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (p *parser) stringValue(name string) string {
	if p.peek() != '"' {
		fail("bad_" + name)
	}
	raw := p.str()
	if !utf8.Valid(raw) {
		fail("malformed_json")
	}
	return string(raw)
}

func (p *parser) literal(word string) bool {
	if len(p.b)-p.i >= len(word) && string(p.b[p.i:p.i+len(word)]) == word {
		p.i += len(word)
		return true
	}
	return false
}

func (p *parser) boolean(name string) bool {
	if p.literal("true") {
		return true
	}
	if p.literal("false") {
		return false
	}
	fail("bad_" + name)
	return false
}

// integer reads an integer literal exactly: -?(0|[1-9][0-9]*), magnitude <= 2^64-1.
func (p *parser) integer(name string) (negative bool, magnitude uint64) {
	if p.peek() == '-' {
		negative = true
		p.i++
	}
	first := p.peek()
	if first < '0' || first > '9' {
		fail("bad_" + name)
	}
	digits := 0
	for c := p.peek(); c >= '0' && c <= '9'; c = p.peek() {
		d := uint64(c - '0')
		if magnitude > (1<<64-1-d)/10 {
			fail("bad_" + name)
		}
		magnitude = magnitude*10 + d
		digits++
		p.i++
	}
	if first == '0' && digits > 1 {
		fail("malformed_json")
	}
	if c := p.peek(); c == '.' || c == 'e' || c == 'E' {
		fail("bad_" + name)
	}
	return negative, magnitude
}

// str reads a JSON string's bytes (escapes decoded), at most maxStringBytes.
func (p *parser) str() []byte {
	p.expect('"')
	var out []byte
	for {
		c := p.peek()
		if c < 0 {
			fail("malformed_json")
		}
		p.i++
		switch {
		case c == '"':
			return out
		case c == '\\':
			e := p.peek()
			if e < 0 {
				fail("malformed_json")
			}
			p.i++
			switch e {
			case '"', '\\', '/':
				out = append(out, byte(e))
			case 'b':
				out = append(out, 8)
			case 'f':
				out = append(out, 12)
			case 'n':
				out = append(out, 10)
			case 'r':
				out = append(out, 13)
			case 't':
				out = append(out, 9)
			case 'u':
				out = p.unicodeEscape(out)
			default:
				fail("malformed_json")
			}
		case c < 0x20:
			fail("malformed_json")
		default:
			out = append(out, byte(c))
		}
		if len(out) > maxStringBytes {
			fail("malformed_json")
		}
	}
}

func (p *parser) hex4() rune {
	if len(p.b)-p.i < 4 {
		fail("malformed_json")
	}
	var v rune
	for j := 0; j < 4; j++ {
		d, ok := hexDigit(p.b[p.i], true)
		if !ok {
			fail("malformed_json")
		}
		v = v<<4 | rune(d)
		p.i++
	}
	return v
}

func (p *parser) unicodeEscape(out []byte) []byte {
	r := p.hex4()
	if r >= 0xD800 && r <= 0xDBFF {
		if !p.literal("\\u") {
			fail("malformed_json")
		}
		low := p.hex4()
		if low < 0xDC00 || low > 0xDFFF {
			fail("malformed_json")
		}
		r = 0x10000 + (r-0xD800)<<10 + (low - 0xDC00)
	} else if r >= 0xDC00 && r <= 0xDFFF {
		fail("malformed_json")
	}
	return utf8.AppendRune(out, r)
}

func (p *parser) skipValue(depth int) {
	c := p.peek()
	switch {
	case c < 0:
		fail("malformed_json")
	case c == '{' || c == '[':
		if depth >= maxDepth {
			fail("too_deep")
		}
		closer := '}'
		if c == '[' {
			closer = ']'
		}
		p.i++
		p.ws()
		if p.peek() == int(closer) {
			p.i++
			return
		}
		for {
			p.ws()
			if closer == '}' {
				p.str()
				p.ws()
				p.expect(':')
				p.ws()
			}
			p.skipValue(depth + 1)
			p.ws()
			if p.peek() == ',' {
				p.i++
				continue
			}
			p.expect(byte(closer))
			return
		}
	case c == '"':
		p.str()
	case c == 't' || c == 'f' || c == 'n':
		if !p.literal("true") && !p.literal("false") && !p.literal("null") {
			fail("malformed_json")
		}
	default:
		p.skipNumber()
	}
}

func (p *parser) digits() {
	if c := p.peek(); c < '0' || c > '9' {
		fail("malformed_json")
	}
	for c := p.peek(); c >= '0' && c <= '9'; c = p.peek() {
		p.i++
	}
}

func (p *parser) skipNumber() {
	if p.peek() == '-' {
		p.i++
	}
	first := p.peek()
	if first < '0' || first > '9' {
		fail("malformed_json")
	}
	if first == '0' {
		p.i++
	} else {
		p.digits()
	}
	if p.peek() == '.' {
		p.i++
		p.digits()
	}
	if c := p.peek(); c == 'e' || c == 'E' {
		p.i++
		if s := p.peek(); s == '+' || s == '-' {
			p.i++
		}
		p.digits()
	}
}

// parseHLC reads `<ms hex>:<counter hex>:<suffix>` as PulseCore's HLCStamp.parse:
// lowercase hex, 1-16 ms digits fitting int64, 4-8 counter digits without
// padding beyond 4; the suffix is everything after the second colon.
func parseHLC(s string) (ms int64, counter uint32, suffix string, ok bool) {
	c1 := indexByte(s, ':', 0)
	if c1 < 0 {
		return
	}
	c2 := indexByte(s, ':', c1+1)
	if c2 < 0 {
		return
	}
	m, okm := parseHex(s[:c1], 16)
	if !okm || m > 1<<63-1 {
		return
	}
	cs := s[c1+1 : c2]
	if len(cs) < 4 || len(cs) > 8 || (len(cs) > 4 && cs[0] == '0') {
		return
	}
	c, okc := parseHex(cs, 8)
	if !okc {
		return
	}
	return int64(m), uint32(c), s[c2+1:], true
}

func indexByte(s string, c byte, from int) int {
	for i := from; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func parseHex(s string, maxDigits int) (uint64, bool) {
	if len(s) == 0 || len(s) > maxDigits {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		d, ok := hexDigit(s[i], false)
		if !ok {
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v, true
}

// hexDigit is the value of hex digit c (uppercase A-F only when upper).
func hexDigit(c byte, upper bool) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case upper && c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// unixMs reads exactly YYYY-MM-DDTHH:MM:SS.mmmZ (valid date, no leap second).
func unixMs(s string) (int64, bool) {
	if len(s) != 24 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[19] != '.' ||
		s[23] != 'Z' {
		return 0, false
	}
	num := func(from, n int) (int64, bool) {
		var v int64
		for j := from; j < from+n; j++ {
			if s[j] < '0' || s[j] > '9' {
				return 0, false
			}
			v = v*10 + int64(s[j]-'0')
		}
		return v, true
	}
	y, ok1 := num(0, 4)
	mo, ok2 := num(5, 2)
	d, ok3 := num(8, 2)
	h, ok4 := num(11, 2)
	mi, ok5 := num(14, 2)
	sec, ok6 := num(17, 2)
	ms, ok7 := num(20, 3)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) || mo < 1 || mo > 12 || h >= 24 || mi >= 60 || sec >= 60 {
		return 0, false
	}
	leap := y%4 == 0 && (y%100 != 0 || y%400 == 0)
	monthDays := []int64{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
	if leap {
		monthDays[1] = 29
	}
	if d < 1 || d > monthDays[mo-1] {
		return 0, false
	}
	// days_from_civil (H. Hinnant), as PulseCore's RFC3339Reader.
	yy := y
	if mo <= 2 {
		yy--
	}
	era := yy / 400
	if yy < 0 {
		era = (yy - 399) / 400
	}
	yoe := yy - era*400
	mp := mo + 9
	if mo > 2 {
		mp = mo - 3
	}
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	days := era*146_097 + doe - 719_468
	return ((days*24+h)*60+mi)*60_000 + sec*1000 + ms, true
}
