//go:build race

package testexit

import "runtime"

const raceEnabled = true

// raceErrors is the number of data races the race detector reported so
// far (the count the testing package checks after every test).
func raceErrors() int { return runtime.RaceErrors() }
