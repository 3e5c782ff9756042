"""logonmesh's daemon (``logonmesh.daemon``): a ZeroMQ peer that replicates users and sessions to the other nodes.

Other processes reach it only through ``logonmesh.daemon.client`` (the ipc
client); the wire format is ``logonmesh.daemon.wire`` and the settings
``logonmesh.daemon.config``.  Everything here is internal to logonmesh.
"""
