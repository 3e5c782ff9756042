from daemon.cli import main

main(prog_name="logonmesh")
