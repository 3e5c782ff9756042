"""``python -m logonmesh …`` is the ``logonmesh`` command, whatever folders the working directory holds."""

from logonmesh.cli import main

main(prog_name="logonmesh")
