"""The PUB/SUB bus: one PUB bound here, one SUB connected to every peer's PUB.

PUB/SUB drops by design (slow joiners, the high-water mark, partitions), so
nothing here retries: a loss shows up as a sequence gap or a digest mismatch
and repair fills it in.
"""

from __future__ import annotations

import zmq

from logonmesh.daemon.curve import Curve

BUS_HWM = 100_000  # a burst of merges should queue, not silently vanish at the default 1000
BYE_LINGER_MS = 200  # how long closing waits for the last message (the goodbye) to leave


def advertised(endpoint: str, host: str | None) -> str:
    """The bound endpoint as other hosts must dial it: the advertised host, the real (maybe ephemeral) port.

    A socket bound to 0.0.0.0 reports tcp://0.0.0.0:PORT, which no other host can dial.
    """
    if not host:
        return endpoint
    port = endpoint.rsplit(":", 1)[1]
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class Bus:
    def __init__(self, ctx: zmq.Context, bind: str, curve: Curve, port: int = 0,
                 advertise: str | None = None) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.sndhwm = BUS_HWM
        curve.server(self.pub)
        self.pub.bind(f"tcp://{bind}:{port}")
        self.endpoint = advertised(self.pub.last_endpoint.decode(), advertise)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.rcvhwm = BUS_HWM
        curve.client(self.sub)
        self.sub.subscribe(b"")
        self._connected: set[str] = set()

    def publish(self, frame: bytes) -> bool:
        try:
            self.pub.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def follow(self, endpoint: str) -> None:
        if endpoint not in self._connected:
            self.sub.connect(endpoint)
            self._connected.add(endpoint)

    def unfollow(self, endpoint: str) -> None:
        if endpoint in self._connected:
            self._connected.discard(endpoint)
            try:
                self.sub.disconnect(endpoint)
            except zmq.ZMQError:
                pass

    def close(self) -> None:
        # a short linger: the "bye" published just before must still leave (nothing else is pending then)
        self.pub.close(linger=BYE_LINGER_MS)
        self.sub.close(linger=0)
