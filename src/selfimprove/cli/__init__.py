"""The ``selfimprove`` command, one module per command group.

``app.py`` holds the typer app, shared options, progress rendering and ``main()`` (error
handling and exit codes). ``diff.py`` and ``interp.py`` add their commands to the same app;
importing this package registers them all.
"""

from selfimprove.cli import diff as _diff  # noqa: F401  (registers `selfimprove diff`)
from selfimprove.cli import interp as _interp  # noqa: F401  (registers `selfimprove interp`)
from selfimprove.cli.app import app, main

__all__ = ["app", "main"]
