//go:build !race

package testexit

const raceEnabled = false

func raceErrors() int { return 0 }
