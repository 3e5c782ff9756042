"""Optional CURVE encryption and authentication for the tcp sockets between nodes.

Every message is already signed with the cookie; CURVE adds confidentiality
on the wire between hosts, and refuses the handshake of anyone who does not
hold the cluster's key.  The cluster keypair is derived from the cookie, so
the keys live wherever the cookie lives (``var/cookie`` or LOGONMESH_COOKIE)
and there is nothing more to distribute.  A ZAP handler accepts only clients
that present the cluster's public key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import zmq
import zmq.auth.thread
from zmq.utils import z85


@dataclass(frozen=True)
class Curve:
    """How this process secures its tcp sockets; ``enabled=False`` makes every call a no-op."""

    enabled: bool
    public: bytes = b""
    secret: bytes = b""

    @classmethod
    def from_cookie(cls, cookie: bytes, enabled: bool) -> "Curve":
        if not enabled:
            return cls(False)
        if not zmq.has("curve"):
            raise RuntimeError("--curve was asked for, but this libzmq was built without CURVE")
        secret = z85.encode(hashlib.sha256(b"logonmesh/curve/v1" + cookie).digest())
        return cls(True, zmq.curve_public(secret), secret)

    def server(self, sock: zmq.Socket) -> None:
        """For a socket that binds (PUB, ROUTER)."""
        if self.enabled:
            sock.curve_secretkey = self.secret
            sock.curve_publickey = self.public
            sock.curve_server = True

    def client(self, sock: zmq.Socket) -> None:
        """For a socket that connects to a node (SUB, DEALER)."""
        if self.enabled:
            sock.curve_secretkey = self.secret
            sock.curve_publickey = self.public
            sock.curve_serverkey = self.public

    def authenticator(self, ctx: zmq.Context) -> "zmq.auth.thread.ThreadAuthenticator | None":
        """Start a ZAP handler that lets in only holders of the cluster key."""
        if not self.enabled:
            return None
        auth = zmq.auth.thread.ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=self)
        return auth

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: pyzmq hands us the client's public key (z85) to accept or refuse.

        Compared in constant time, like every credential in logonmesh.  (The CURVE
        handshake has already proved that the client holds the secret half of the
        key it shows, so learning the cluster's public key would not be enough.)
        """
        return hmac.compare_digest(key, self.public)
