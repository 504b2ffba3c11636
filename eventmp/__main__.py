"""``python -m eventmp``, and the ``eventmp`` command's entry point.

It imports nothing heavy before :func:`eventmp.preload.start_early` has started the
forkserver for ``eventmp run``: the server's start-up then runs beside the command's own.
"""

import sys


def main() -> None:
    """Console-script entry point: the command line in ``sys.argv``."""
    from .preload import start_early

    start_early(sys.argv[1:])
    from .cli import run_main

    run_main()


if __name__ == "__main__":
    main()
