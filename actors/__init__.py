"""Who acts: mailboxes and actor refs, provider connections (`Connection` + `ProviderActor`),
the breaker/retry/limiter machines, the router, and the metrics they record.
The fault-injection kit lives in `actors.testing`.

Imports `protocol`, never `supervisors` (a test keeps it so).
"""

import typing as _typing

if _typing.TYPE_CHECKING:
    from ._admission import Admission as Admission
    from ._admission import AdmissionStatistics as AdmissionStatistics
    from ._admission import AdmissionTimeout as AdmissionTimeout
    from ._breaker import Breaker as Breaker
    from ._breaker import BreakerSnapshot as BreakerSnapshot
    from ._breaker import BreakerState as BreakerState
    from ._breaker import BreakerTransitionError as BreakerTransitionError
    from ._breaker import Permit as Permit
    from ._breaker import Refusal as Refusal
    from ._breaker import Transition as Transition
    from ._cache import CacheStatistics as CacheStatistics
    from ._cache import CacheStore as CacheStore
    from ._cache import MemoryCacheStore as MemoryCacheStore
    from ._cache import ResponseCache as ResponseCache
    from ._cache import SharedCacheStore as SharedCacheStore
    from ._cache import SharedStream as SharedStream
    from ._client import Client as Client
    from ._client import ClientStream as ClientStream
    from ._client import GatewayError as GatewayError
    from ._client_keys import ClientGrant as ClientGrant
    from ._client_keys import ClientKey as ClientKey
    from ._client_keys import ClientKeys as ClientKeys
    from ._client_keys import ClientStatistics as ClientStatistics
    from ._gateway import Gateway as Gateway
    from ._gateway import GatewayBackend as GatewayBackend
    from ._gateway import GatewayStatistics as GatewayStatistics
    from ._http_errors import failure_from_exception as failure_from_exception
    from ._limiter import Grant as Grant
    from ._limiter import Limiter as Limiter
    from ._limiter import LimiterSnapshot as LimiterSnapshot
    from ._limiter import Wait as Wait
    from ._mailbox import Envelope as Envelope
    from ._mailbox import Mailbox as Mailbox
    from ._mailbox import MailboxClosed as MailboxClosed
    from ._mailbox import MailboxStatistics as MailboxStatistics
    from ._mailbox import QueueFull as QueueFull
    from ._mailbox import ask as ask
    from ._mailbox import ask_stream as ask_stream
    from ._metrics import ConnectionMetrics as ConnectionMetrics
    from ._metrics import ConnectionMetricsSnapshot as ConnectionMetricsSnapshot
    from ._metrics import HistogramSnapshot as HistogramSnapshot
    from ._metrics import ModelUsage as ModelUsage
    from ._metrics import cost_of as cost_of
    from ._metrics import price_for as price_for
    from ._metrics import prometheus_text as prometheus_text
    from ._provider import Call as Call
    from ._provider import Connection as Connection
    from ._provider import ConnectionStatistics as ConnectionStatistics
    from ._provider import ProviderActor as ProviderActor
    from ._provider import ReplyStream as ReplyStream
    from ._retry import RetryBudget as RetryBudget
    from ._retry import RetryBudgetSnapshot as RetryBudgetSnapshot
    from ._retry import RetryDecision as RetryDecision
    from ._retry import RetryPolicy as RetryPolicy
    from ._router import ResolvedTarget as ResolvedTarget
    from ._router import Router as Router
    from ._router import RouterStream as RouterStream

_LAZY = {
    "Admission": "._admission",
    "AdmissionStatistics": "._admission",
    "AdmissionTimeout": "._admission",
    "Breaker": "._breaker",
    "BreakerSnapshot": "._breaker",
    "BreakerState": "._breaker",
    "BreakerTransitionError": "._breaker",
    "Permit": "._breaker",
    "Refusal": "._breaker",
    "Transition": "._breaker",
    "CacheStatistics": "._cache",
    "CacheStore": "._cache",
    "MemoryCacheStore": "._cache",
    "ResponseCache": "._cache",
    "SharedCacheStore": "._cache",
    "SharedStream": "._cache",
    "Client": "._client",
    "ClientStream": "._client",
    "GatewayError": "._client",
    "ClientGrant": "._client_keys",
    "ClientKey": "._client_keys",
    "ClientKeys": "._client_keys",
    "ClientStatistics": "._client_keys",
    "Gateway": "._gateway",
    "GatewayBackend": "._gateway",
    "GatewayStatistics": "._gateway",
    "failure_from_exception": "._http_errors",
    "Grant": "._limiter",
    "Limiter": "._limiter",
    "LimiterSnapshot": "._limiter",
    "Wait": "._limiter",
    "Envelope": "._mailbox",
    "Mailbox": "._mailbox",
    "MailboxClosed": "._mailbox",
    "MailboxStatistics": "._mailbox",
    "QueueFull": "._mailbox",
    "ask": "._mailbox",
    "ask_stream": "._mailbox",
    "ConnectionMetrics": "._metrics",
    "ConnectionMetricsSnapshot": "._metrics",
    "HistogramSnapshot": "._metrics",
    "ModelUsage": "._metrics",
    "cost_of": "._metrics",
    "price_for": "._metrics",
    "prometheus_text": "._metrics",
    "Call": "._provider",
    "Connection": "._provider",
    "ConnectionStatistics": "._provider",
    "ProviderActor": "._provider",
    "ReplyStream": "._provider",
    "RetryBudget": "._retry",
    "RetryBudgetSnapshot": "._retry",
    "RetryDecision": "._retry",
    "RetryPolicy": "._retry",
    "ResolvedTarget": "._router",
    "Router": "._router",
    "RouterStream": "._router",
}


def __getattr__(name: str) -> object:
    # Each public name's module is imported on first use: importing one module of the
    # package (every import of a private module runs this file first) must not import all
    # of them - the gateway and its client pull in trio-websocket (bench/imports.py).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib as _importlib

    return getattr(_importlib.import_module(module, __name__), name)


__all__ = [
    "Admission",
    "AdmissionStatistics",
    "AdmissionTimeout",
    "Breaker",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransitionError",
    "CacheStatistics",
    "CacheStore",
    "Call",
    "Client",
    "ClientGrant",
    "ClientKey",
    "ClientKeys",
    "ClientStatistics",
    "ClientStream",
    "Connection",
    "ConnectionMetrics",
    "ConnectionMetricsSnapshot",
    "ConnectionStatistics",
    "Envelope",
    "Gateway",
    "GatewayBackend",
    "GatewayError",
    "GatewayStatistics",
    "Grant",
    "HistogramSnapshot",
    "Limiter",
    "LimiterSnapshot",
    "Mailbox",
    "MailboxClosed",
    "MailboxStatistics",
    "MemoryCacheStore",
    "ModelUsage",
    "Permit",
    "ProviderActor",
    "QueueFull",
    "Refusal",
    "ReplyStream",
    "ResolvedTarget",
    "ResponseCache",
    "RetryBudget",
    "RetryBudgetSnapshot",
    "RetryDecision",
    "RetryPolicy",
    "Router",
    "RouterStream",
    "SharedCacheStore",
    "SharedStream",
    "Transition",
    "Wait",
    "ask",
    "ask_stream",
    "cost_of",
    "failure_from_exception",
    "price_for",
    "prometheus_text",
]
