"""``python -m edgerun`` == the ``edgerun`` command."""

from edgerun.cli import main

main()
