"""Who keeps them alive: the supervision tree (OTP semantics on trio), the runtime facade
(`open_runtime`) and the ``switchboard`` command line.

Importing it stays light: the CLI, the fault kit and Hypothesis are imported lazily.
"""

from ._intensity import RestartIntensity as RestartIntensity
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
from ._supervisor import ChildStarted as ChildStarted
from ._supervisor import ChildStartFailed as ChildStartFailed
from ._supervisor import GaveUp as GaveUp
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorClosed as SupervisorClosed
from ._supervisor import SupervisorEvent as SupervisorEvent
from ._supervisor import SupervisorGaveUp as SupervisorGaveUp
from ._supervisor import SupervisorStatistics as SupervisorStatistics

__all__ = [
    "ChildExited",
    "ChildInfo",
    "ChildRestarted",
    "ChildSpec",
    "ChildStartFailed",
    "ChildStarted",
    "ConnectionHealth",
    "GaveUp",
    "Health",
    "ModelTotals",
    "ProbeResult",
    "RestartIntensity",
    "Runtime",
    "RuntimeMetrics",
    "Supervisor",
    "SupervisorClosed",
    "SupervisorEvent",
    "SupervisorGaveUp",
    "SupervisorStatistics",
    "children_to_restart",
    "open_runtime",
    "should_restart",
    "start_runtime",
]
