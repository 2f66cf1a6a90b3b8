"""`python -m exporter serve --dir DIR ...`: the same as `nanogpt-monitor serve`."""

from .cli import main

raise SystemExit(main())
