"""reportgen: batch CNN-visualization reports (kernels, feature maps, CAMs), cached, as HTML and PDF.

The Python API (docs/API.md): ``reportgen.run(config, **overrides)`` runs a config as the CLI does;
``reportgen.open_run(folder)`` reads a finished run's images and raw maps. Importing the package imports
neither torch nor numpy: they load when a run or a map needs them.
"""

__version__ = "0.1.0"

from reportgen.api import Run, open_run, run  # noqa: E402  (after __version__, which api reads)

__all__ = ["__version__", "Run", "open_run", "run"]
