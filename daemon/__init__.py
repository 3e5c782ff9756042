"""logonmesh's daemon: a ZeroMQ peer that replicates users and sessions to the other nodes.

Public surface for other processes: ``daemon.config`` (settings),
``daemon.client`` (the ipc client), ``daemon.wire`` (the wire format) and
``daemon.testing`` (the multi-node test harness).  The rest is internal.
"""
