"""logonmesh: cluster-wide logins for Python web apps, with no central cache server.

The public names live in ``logonmesh.testing`` (the multi-node harness and its
pytest plugin) and, for apps, ``logonmesh.flask``.  The node's parts are mapped
in from the repository's top-level folders: ``logonmesh.daemon`` (``daemon/``),
``logonmesh.web`` (``web/``) and ``logonmesh.discovery`` (``discovery/``); they are
ours to change.
"""

__version__ = "0.2.0"
