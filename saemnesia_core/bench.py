"""Benchmarks runnable as modules: `python -m saemnesia_core.bench minicanvas [options]`."""
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("minicanvas",):
        sys.exit("usage: python -m saemnesia_core.bench minicanvas [--help]")
    from .minicanvas import bench
    return bench.main(argv[1:])


if __name__ == "__main__":
    main()
