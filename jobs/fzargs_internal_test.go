package jobs

import (
	"encoding/json"
	"time"
)

// The args types of the strict decoder's fuzz targets (FuzzShapeClean
// here; FuzzCheckArgs of package argcheck fuzzes the checker with a copy of
// them).

// fzCustomer is a nested struct of the fuzzed args.
type fzCustomer struct {
	Email string `json:"email"`
	Age   int    `json:"age,omitempty"`
}

// fzOrderArgs has one field of every kind the checker treats apart.
type fzOrderArgs struct {
	OrderID  int64          `json:"order_id" jobs:"id"`
	Note     string         `json:"note,omitempty"`
	Tags     []string       `json:"tags" jobs:"required"`
	Channel  *string        `json:"channel"`
	Region   string         `json:"region" jobs:"optional"`
	Count    uint8          `json:"count,string" jobs:"required"`
	At       time.Time      `json:"at,omitzero"`
	Customer fzCustomer     `json:"customer" jobs:"required"`
	Meta     map[string]int `json:"meta,omitempty"`
	Any      any            `json:"any,omitempty"`
	Skip     int            `json:"-"`
}

func (fzOrderArgs) Kind() string { return "fz.order" }

type fzBase struct {
	TenantID int64 `json:"tenant_id" jobs:"id"`
}

type FzAudit struct {
	By string `json:"by"`
}

// fzNestedArgs has promoted, pointer, slice and self-decoding fields, and
// an alias.
type fzNestedArgs struct {
	fzBase
	*FzAudit
	Parent *fzCustomer      `json:"parent"`
	Items  []fzCustomer     `json:"items" jobs:"required"`
	Raw    json.RawMessage  `json:"raw" jobs:"required"`
	Seen   map[string]*bool `json:"seen" jobs:"required"`
}

func (fzNestedArgs) Kind() string          { return "fz.nested" }
func (fzNestedArgs) KindAliases() []string { return []string{"fz.nested_v1"} }
