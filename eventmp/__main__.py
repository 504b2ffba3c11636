"""``python -m eventmp``: the same as the ``eventmp`` command."""

from .cli import run_main

if __name__ == "__main__":
    run_main()
