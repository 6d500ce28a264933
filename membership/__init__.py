"""SWIM + Lifeguard membership as a sans-I/O state machine, with its wire codec.

No sockets, no clock, no global random in this package: see ``machine.py``.
"""

from membership.config import SwimConfig
from membership.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from membership.events import EventKind, MemberEvent, StreamKind, StreamRequest
from membership.machine import Membership, MembershipStats, MemberView
from membership.meta import Load, NodeMeta, ReplicationClaim
from membership.sharing import ConvergedView, SharedCaches
from membership.state import Status

__all__ = [
    "ConfigError",
    "ConvergedView",
    "EventKind",
    "Load",
    "LocalProtocolError",
    "MemberEvent",
    "MemberView",
    "Membership",
    "MembershipStats",
    "NodeMeta",
    "RemoteProtocolError",
    "ReplicationClaim",
    "SharedCaches",
    "Status",
    "StreamKind",
    "StreamRequest",
    "SwimConfig",
]
