"""``python -m fgr_defense train ...``: see :mod:`fgr_defense.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
