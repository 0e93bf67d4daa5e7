"""``brinell`` and ``python -m brinell``: the command line, once its extra is known present."""

from __future__ import annotations

from .extras import needs


def main() -> None:
    with needs("cli", "the brinell command"):
        from .cli import main as cli_main
    cli_main()


if __name__ == "__main__":
    main()
