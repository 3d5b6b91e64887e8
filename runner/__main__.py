"""``python -m runner`` is the ``oprunner`` command."""

from .cli import main

main()
