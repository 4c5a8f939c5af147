package reporting

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrInvalidInput is matched (errors.Is) by every error the service returns
// for input a person must correct: each is a *ValidationError. Such an error
// never leaves anything written.
var ErrInvalidInput = errors.New("reporting: invalid input")

// Sentinels naming a problem, each matched by the *ValidationError that
// reports it (which also matches ErrInvalidInput).
var (
	// ErrUnknownCar: the car ID names no car.
	ErrUnknownCar = errors.New("reporting: unknown car")
	// ErrUnknownUsers: some user IDs name no user; ValidationError.IDs
	// lists them.
	ErrUnknownUsers = errors.New("reporting: unknown users")
	// ErrTooManyUserIDs: a bulk creation holds more than MaxBulkUserIDs
	// distinct user IDs. It is refused when the job is enqueued, by any
	// path: the args refuse to be encoded.
	ErrTooManyUserIDs = errors.New("reporting: too many user IDs")
)

// MaxListedIDs is how many IDs an error lists at most (the smallest ones);
// the message gives the full count.
const MaxListedIDs = 20

// ValidationError is one problem with the input of a reporting call or job.
type ValidationError struct {
	// Field is the JSON name of the input at fault, such as "user_ids".
	Field string
	// Message says what is wrong in words a person can act on.
	Message string
	// IDs are the IDs at fault, smallest first, at most MaxListedIDs of
	// them (the message gives the full count); nil when the problem is not
	// about particular IDs.
	IDs []int64
	// Err, when set, is a sentinel naming the problem (ErrUnknownCar,
	// ErrUnknownUsers, ErrTooManyUserIDs); Unwrap returns it.
	Err error
}

// Error implements error: "reporting: invalid <field>: <message>".
func (e *ValidationError) Error() string {
	return "reporting: invalid " + e.Field + ": " + e.Message
}

// Is makes errors.Is(err, ErrInvalidInput) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidInput }

// Unwrap returns Err.
func (e *ValidationError) Unwrap() error { return e.Err }

// idsError returns a *ValidationError of field for IDs at fault: listed
// holds the first of them (smallest first; cut to MaxListedIDs), total is
// how many there are. The message is "<what> (<total>): <IDs>[ and N more]".
func idsError(field, what string, listed []int64, total int, sentinel error) *ValidationError {
	listed = listed[:min(len(listed), MaxListedIDs)]
	var msg strings.Builder
	fmt.Fprintf(&msg, "%s (%d): ", what, total)
	for i, id := range listed {
		if i > 0 {
			msg.WriteString(", ")
		}
		msg.WriteString(strconv.FormatInt(id, 10))
	}
	if total > len(listed) {
		fmt.Fprintf(&msg, " and %d more", total-len(listed))
	}
	return &ValidationError{Field: field, Message: msg.String(), IDs: listed, Err: sentinel}
}
