"""SWIM + Lifeguard membership as a sans-I/O state machine, with its wire codec.

No sockets, no clock, no global random in this package: see ``machine.py``.
"""

from membership.config import SwimConfig
from membership.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from membership.machine import Membership, MemberEvent, MemberView, MembershipStats, StreamRequest
from membership.meta import Load, NodeMeta
from membership.state import Status

__all__ = [
    "ConfigError",
    "Load",
    "LocalProtocolError",
    "MemberEvent",
    "MemberView",
    "Membership",
    "MembershipStats",
    "NodeMeta",
    "RemoteProtocolError",
    "Status",
    "StreamRequest",
    "SwimConfig",
]
