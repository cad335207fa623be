"""`python -m vishwamai.sharding '<json>'`: `layout_memory` in a fresh process (see
`vishwamai.sharding.step.layout_memory_subprocess`), its rows printed as JSON."""
import sys

from vishwamai.sharding.step import _main

if __name__ == "__main__":
    _main(sys.argv[1:])
