"""The network-namespace lab, under the name the tests import it by.

The lab moved into the package (:mod:`rmap2p.netlab`) so that ``rmap2p soak``
can run its daemons in it. This module *is* that module (the same object in
``sys.modules``), so ``from netns import _proc_starttime`` and anything a test
patches on ``netns`` act on the lab itself, not on a copy.
"""

import sys

from rmap2p import netlab

sys.modules[__name__] = netlab
