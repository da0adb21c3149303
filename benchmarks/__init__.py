"""gufm benchmark suite: `python -m benchmarks run [--quick] [--out FILE.json]`."""
