"""``python -m brainage.data.manifest``: ``brainage manifest``, as when the package was one module."""

from __future__ import annotations

import sys

from brainage.data.manifest.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
