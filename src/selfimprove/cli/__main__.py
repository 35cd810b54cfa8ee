"""``python -m selfimprove.cli``: the same entry point as the ``selfimprove`` script."""

from selfimprove.cli import main

main()
