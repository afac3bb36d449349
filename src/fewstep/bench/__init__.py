"""The benchmark harness: suites, runner, meters, store and report."""
