package natsrelay

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// ContentType is the Content-Type header of every message the relay
// publishes: a CloudEvents 1.0 event in structured mode, as JSON.
const ContentType = "application/cloudevents+json"

// CloudEvent is the envelope of every message the relay publishes, the
// JSON format of CloudEvents 1.0 (https://cloudevents.io), so a consumer in
// any language reads it. The mapping from an outbox_events row:
//
//	specversion      "1.0"
//	id               the row's id, in decimal ("1234"); unique per source
//	source           Config.Source ("/aftercommit/<database>" by default)
//	type             the row's topic ("donation.created")
//	subject          the row's key, absent when the event has none
//	time             the row's created_at (its transaction's start), RFC 3339
//	datacontenttype  "application/json"
//	data             the row's payload, the JSON as published
//
// The message's Nats-Msg-Id header is the id too, and its subject is
// Subject(prefix, type, subject).
type CloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
}

// EventID returns the outbox_events id the envelope carries, or false when
// its id is not one (an event that did not come from a relay).
func (e *CloudEvent) EventID() (int64, bool) {
	id, err := strconv.ParseInt(e.ID, 10, 64)
	return id, err == nil && id > 0
}

// Subject returns the NATS subject of an event: the prefix, the topic's
// dot-separated words, and one token for the key, so a consumer can filter
// by topic ("<prefix>.donation.created.>") or by key and JetStream keeps
// each subject's order.
//
// A topic word or a key that is a NATS token as written (letters, digits,
// '-', and '_' in topic words) stays as written. The key token of an event
// without a key is "_"; a key with other characters (a '.', a space, an
// '_', non-ASCII) becomes "_" followed by its unpadded base64url, and a
// topic word with other characters (only an event inserted by hand can
// have one) becomes "~" followed by its base64url.
func Subject(prefix, topic, key string, hasKey bool) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(topic) + len(key) + 8)
	b.WriteString(prefix)
	for word := range strings.SplitSeq(topic, ".") {
		b.WriteByte('.')
		if plainToken(word, true) {
			b.WriteString(word)
		} else {
			b.WriteByte('~')
			b.WriteString(base64.RawURLEncoding.EncodeToString([]byte(word)))
		}
	}
	b.WriteByte('.')
	switch {
	case !hasKey:
		b.WriteByte('_')
	case plainToken(key, false):
		b.WriteString(key)
	default:
		b.WriteByte('_')
		b.WriteString(base64.RawURLEncoding.EncodeToString([]byte(key)))
	}
	return b.String()
}

// plainToken reports whether s is a non-empty run of ASCII letters, digits
// and '-' (and '_' when underscore is true).
func plainToken(s string, underscore bool) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-':
		case c == '_' && underscore:
		default:
			return false
		}
	}
	return true
}

// validPrefix reports whether p is one or more dot-separated plain tokens.
func validPrefix(p string) bool {
	if p == "" {
		return false
	}
	for word := range strings.SplitSeq(p, ".") {
		if !plainToken(word, true) {
			return false
		}
	}
	return true
}

// AppendJSON appends the envelope's JSON to dst, as json.Marshal writes
// it, taking Data as it is: it must be valid JSON (the relay's comes from
// a jsonb column).
func (e *CloudEvent) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"specversion":`...)
	dst = appendString(dst, e.SpecVersion)
	dst = append(dst, `,"id":`...)
	dst = appendString(dst, e.ID)
	dst = append(dst, `,"source":`...)
	dst = appendString(dst, e.Source)
	dst = append(dst, `,"type":`...)
	dst = appendString(dst, e.Type)
	if e.Subject != "" {
		dst = append(dst, `,"subject":`...)
		dst = appendString(dst, e.Subject)
	}
	dst = append(dst, `,"time":"`...)
	dst = e.Time.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","datacontenttype":`...)
	dst = appendString(dst, e.DataContentType)
	dst = append(dst, `,"data":`...)
	if len(e.Data) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, e.Data...)
	}
	return append(dst, '}')
}

// appendString appends s as a JSON string: as it is when it holds only
// printable ASCII that needs no escape, else through encoding/json.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always encodes
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
