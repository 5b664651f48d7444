"""A trivial job for benchmarks (importable by worker processes)."""


def noop(value: int) -> int:
    return value
