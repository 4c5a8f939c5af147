package donations

// FoldEmailCountersSQL is the fold statement, for tests that race two folds
// by hand.
const FoldEmailCountersSQL = foldEmailCountersSQL
