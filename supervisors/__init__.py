"""Who keeps them alive: the supervision tree (OTP semantics on trio), the runtime facade
(`open_runtime`) and the ``switchboard`` command line.

Importing it stays light: the CLI, the fault kit and Hypothesis are imported lazily.
"""

import typing as _typing

from ._intensity import RestartBackoff as RestartBackoff
from ._intensity import RestartIntensity as RestartIntensity
from ._intensity import RestartPlan as RestartPlan
from ._intensity import children_to_restart as children_to_restart
from ._intensity import should_restart as should_restart
from ._runtime import ConnectionHealth as ConnectionHealth
from ._runtime import Health as Health
from ._runtime import ModelTotals as ModelTotals
from ._runtime import ProbeResult as ProbeResult
from ._runtime import Runtime as Runtime
from ._runtime import RuntimeMetrics as RuntimeMetrics
from ._runtime import open_runtime as open_runtime
from ._runtime import start_runtime as start_runtime
from ._supervisor import ChildExited as ChildExited
from ._supervisor import ChildInfo as ChildInfo
from ._supervisor import ChildRestarted as ChildRestarted
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import ChildStart as ChildStart
from ._supervisor import ChildStarted as ChildStarted
from ._supervisor import ChildStartFailed as ChildStartFailed
from ._supervisor import GaveUp as GaveUp
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorClosed as SupervisorClosed
from ._supervisor import SupervisorEvent as SupervisorEvent
from ._supervisor import SupervisorGaveUp as SupervisorGaveUp
from ._supervisor import SupervisorStatistics as SupervisorStatistics
from ._supervisor import open_supervisor as open_supervisor

if _typing.TYPE_CHECKING:
    from ._serving import RuntimeBackend as RuntimeBackend
    from ._serving import start_gateway as start_gateway

_LAZY = {
    "RuntimeBackend": "._serving",
    "start_gateway": "._serving",
}


def __getattr__(name: str) -> object:
    # The gateway and its client pull in trio-websocket (wsproto, h11): imported on first use
    # so that importing the package stays light.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib as _importlib

    return getattr(_importlib.import_module(module, __name__), name)


__all__ = [
    "ChildExited",
    "ChildInfo",
    "ChildRestarted",
    "ChildSpec",
    "ChildStart",
    "ChildStartFailed",
    "ChildStarted",
    "ConnectionHealth",
    "GaveUp",
    "Health",
    "ModelTotals",
    "ProbeResult",
    "RestartBackoff",
    "RestartIntensity",
    "RestartPlan",
    "Runtime",
    "RuntimeBackend",
    "RuntimeMetrics",
    "Supervisor",
    "SupervisorClosed",
    "SupervisorEvent",
    "SupervisorGaveUp",
    "SupervisorStatistics",
    "children_to_restart",
    "open_runtime",
    "open_supervisor",
    "should_restart",
    "start_gateway",
    "start_runtime",
]
