"""``python -m raftlib`` and the ``raftlib`` command."""

from __future__ import annotations

from ._startup import hold_interrupt


def main() -> None:
    """Run the command line; a Ctrl-C while it loads is held (see :mod:`raftlib._startup`)."""
    hold_interrupt()
    from .cli import main as cli

    cli()


if __name__ == "__main__":
    main()
