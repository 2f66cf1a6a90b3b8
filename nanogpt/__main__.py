"""`python -m nanogpt` is `nanogpt-train`."""

from nanogpt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
