"""The benchmark: agbenchmark-style challenges, their judge, runs over models, reports."""
