"""Errors that say whose fault they are (as h11 does).

``LocalProtocolError`` is our own bug: tests and the simulator let it crash.
``RemoteProtocolError`` is a peer's fault (bad bytes, bad signature, a claim
we cannot accept): the driver drops the input, counts it and logs at debug
level. Neither ever reaches the event loop from a datagram.
"""


class ProtocolError(Exception):
    """Base class for protocol errors."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something malformed, oversized or unauthenticated."""


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent."""
