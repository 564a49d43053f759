"""What is said: typed messages, the error taxonomy, provider dialects and configuration.

Pure: imports only the standard library and msgspec (a test keeps it so).
"""

import typing as _typing

if _typing.TYPE_CHECKING:
    from ._accumulate import StreamAccumulator as StreamAccumulator
    from ._config import BreakerConfig as BreakerConfig
    from ._config import BudgetPeriod as BudgetPeriod
    from ._config import CacheConfig as CacheConfig
    from ._config import ClientConfig as ClientConfig
    from ._config import ConnectionConfig as ConnectionConfig
    from ._config import GatewayConfig as GatewayConfig
    from ._config import MailboxConfig as MailboxConfig
    from ._config import Price as Price
    from ._config import ProviderName as ProviderName
    from ._config import RateLimitConfig as RateLimitConfig
    from ._config import RetryConfig as RetryConfig
    from ._config import RouteConfig as RouteConfig
    from ._config import RuntimeConfig as RuntimeConfig
    from ._config import RuntimeSettings as RuntimeSettings
    from ._config import Secret as Secret
    from ._config import Target as Target
    from ._config import TimeoutConfig as TimeoutConfig
    from ._config import secret_enc_hook as secret_enc_hook
    from ._config_load import PRESETS as PRESETS
    from ._config_load import Preset as Preset
    from ._config_load import config_from_dict as config_from_dict
    from ._config_load import config_problems as config_problems
    from ._config_load import connection_from_dict as connection_from_dict
    from ._config_load import dumps_config as dumps_config
    from ._config_load import load_config as load_config
    from ._config_load import loads_config as loads_config
    from ._config_load import missing_keys as missing_keys
    from ._dialect import Dialect as Dialect
    from ._dialect import HttpRequest as HttpRequest
    from ._dialect import StreamDecoder as StreamDecoder
    from ._dialect import dialect_for as dialect_for
    from ._errors import POLICIES as POLICIES
    from ._errors import ConfigError as ConfigError
    from ._errors import ErrorKind as ErrorKind
    from ._errors import KindPolicy as KindPolicy
    from ._errors import ProtocolError as ProtocolError
    from ._errors import RequestFailed as RequestFailed
    from ._errors import SwitchboardError as SwitchboardError
    from ._errors import counts_against_breaker as counts_against_breaker
    from ._errors import is_retryable as is_retryable
    from ._errors import parks_limiter as parks_limiter
    from ._errors import policy as policy
    from ._frames import FEATURE_BATCH as FEATURE_BATCH
    from ._frames import PROTOCOL_VERSION as PROTOCOL_VERSION
    from ._frames import SUBPROTOCOL_JSON as SUBPROTOCOL_JSON
    from ._frames import SUBPROTOCOL_MSGPACK as SUBPROTOCOL_MSGPACK
    from ._frames import Accepted as Accepted
    from ._frames import Batch as Batch
    from ._frames import BatchItem as BatchItem
    from ._frames import Cancel as Cancel
    from ._frames import ChatCall as ChatCall
    from ._frames import ClientFrame as ClientFrame
    from ._frames import ConnectionStatus as ConnectionStatus
    from ._frames import Done as Done
    from ._frames import EmbedCall as EmbedCall
    from ._frames import EmbedDone as EmbedDone
    from ._frames import EventFrame as EventFrame
    from ._frames import FailureFrame as FailureFrame
    from ._frames import FrameError as FrameError
    from ._frames import Goodbye as Goodbye
    from ._frames import Hello as Hello
    from ._frames import Ping as Ping
    from ._frames import Pong as Pong
    from ._frames import ServerFrame as ServerFrame
    from ._frames import StatusCall as StatusCall
    from ._frames import StatusReply as StatusReply
    from ._frames import Welcome as Welcome
    from ._frames import decode_client_frame as decode_client_frame
    from ._frames import decode_server_frame as decode_server_frame
    from ._frames import encode_frame as encode_frame
    from ._messages import CacheMode as CacheMode
    from ._messages import ChatRequest as ChatRequest
    from ._messages import Completion as Completion
    from ._messages import ContentPart as ContentPart
    from ._messages import DecodedItem as DecodedItem
    from ._messages import Embeddings as Embeddings
    from ._messages import EmbedRequest as EmbedRequest
    from ._messages import Failure as Failure
    from ._messages import Finished as Finished
    from ._messages import FinishReason as FinishReason
    from ._messages import ImagePart as ImagePart
    from ._messages import Message as Message
    from ._messages import Producer as Producer
    from ._messages import ReasoningDelta as ReasoningDelta
    from ._messages import ResponseFormat as ResponseFormat
    from ._messages import Restart as Restart
    from ._messages import ServedFrom as ServedFrom
    from ._messages import StreamEvent as StreamEvent
    from ._messages import Switched as Switched
    from ._messages import TextDelta as TextDelta
    from ._messages import TextPart as TextPart
    from ._messages import Tool as Tool
    from ._messages import ToolCall as ToolCall
    from ._messages import ToolCallDelta as ToolCallDelta
    from ._messages import ToolResultPart as ToolResultPart
    from ._messages import ToolUsePart as ToolUsePart
    from ._messages import Usage as Usage
    from ._messages import UsageUpdate as UsageUpdate
    from ._ratelimit import RateLimitInfo as RateLimitInfo
    from ._ratelimit import parse_duration as parse_duration
    from ._ratelimit import parse_rate_limit_headers as parse_rate_limit_headers
    from ._ratelimit import parse_retry_after as parse_retry_after
    from ._validate import refusal as refusal
    from ._validate import request_problem as request_problem

_LAZY = {
    "StreamAccumulator": "._accumulate",
    "BreakerConfig": "._config",
    "BudgetPeriod": "._config",
    "CacheConfig": "._config",
    "ClientConfig": "._config",
    "ConnectionConfig": "._config",
    "GatewayConfig": "._config",
    "MailboxConfig": "._config",
    "Price": "._config",
    "ProviderName": "._config",
    "RateLimitConfig": "._config",
    "RetryConfig": "._config",
    "RouteConfig": "._config",
    "RuntimeConfig": "._config",
    "RuntimeSettings": "._config",
    "Secret": "._config",
    "Target": "._config",
    "TimeoutConfig": "._config",
    "secret_enc_hook": "._config",
    "PRESETS": "._config_load",
    "Preset": "._config_load",
    "config_from_dict": "._config_load",
    "config_problems": "._config_load",
    "connection_from_dict": "._config_load",
    "dumps_config": "._config_load",
    "load_config": "._config_load",
    "loads_config": "._config_load",
    "missing_keys": "._config_load",
    "Dialect": "._dialect",
    "HttpRequest": "._dialect",
    "StreamDecoder": "._dialect",
    "dialect_for": "._dialect",
    "POLICIES": "._errors",
    "ConfigError": "._errors",
    "ErrorKind": "._errors",
    "KindPolicy": "._errors",
    "ProtocolError": "._errors",
    "RequestFailed": "._errors",
    "SwitchboardError": "._errors",
    "counts_against_breaker": "._errors",
    "is_retryable": "._errors",
    "parks_limiter": "._errors",
    "policy": "._errors",
    "PROTOCOL_VERSION": "._frames",
    "SUBPROTOCOL_JSON": "._frames",
    "SUBPROTOCOL_MSGPACK": "._frames",
    "Accepted": "._frames",
    "Batch": "._frames",
    "BatchItem": "._frames",
    "FEATURE_BATCH": "._frames",
    "Cancel": "._frames",
    "ChatCall": "._frames",
    "ClientFrame": "._frames",
    "ConnectionStatus": "._frames",
    "Done": "._frames",
    "EmbedCall": "._frames",
    "EmbedDone": "._frames",
    "EventFrame": "._frames",
    "FailureFrame": "._frames",
    "FrameError": "._frames",
    "Goodbye": "._frames",
    "Hello": "._frames",
    "Ping": "._frames",
    "Pong": "._frames",
    "ServerFrame": "._frames",
    "StatusCall": "._frames",
    "StatusReply": "._frames",
    "Welcome": "._frames",
    "decode_client_frame": "._frames",
    "decode_server_frame": "._frames",
    "encode_frame": "._frames",
    "CacheMode": "._messages",
    "ChatRequest": "._messages",
    "Completion": "._messages",
    "ContentPart": "._messages",
    "DecodedItem": "._messages",
    "Embeddings": "._messages",
    "EmbedRequest": "._messages",
    "Failure": "._messages",
    "Finished": "._messages",
    "FinishReason": "._messages",
    "ImagePart": "._messages",
    "Message": "._messages",
    "Producer": "._messages",
    "ReasoningDelta": "._messages",
    "ResponseFormat": "._messages",
    "Restart": "._messages",
    "ServedFrom": "._messages",
    "StreamEvent": "._messages",
    "Switched": "._messages",
    "TextDelta": "._messages",
    "TextPart": "._messages",
    "Tool": "._messages",
    "ToolCall": "._messages",
    "ToolCallDelta": "._messages",
    "ToolResultPart": "._messages",
    "ToolUsePart": "._messages",
    "Usage": "._messages",
    "UsageUpdate": "._messages",
    "RateLimitInfo": "._ratelimit",
    "parse_duration": "._ratelimit",
    "parse_rate_limit_headers": "._ratelimit",
    "parse_retry_after": "._ratelimit",
    "refusal": "._validate",
    "request_problem": "._validate",
}


def __getattr__(name: str) -> object:
    # Each public name's module is imported on first use: importing one module of the
    # package (every import of a private module runs this file first) must not import
    # all of them - the config loader, the wire frames... (bench/imports.py).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib as _importlib

    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Accepted",
    "Batch",
    "BatchItem",
    "BreakerConfig",
    "BudgetPeriod",
    "CacheConfig",
    "CacheMode",
    "Cancel",
    "ChatCall",
    "ChatRequest",
    "ClientConfig",
    "ClientFrame",
    "Completion",
    "ConfigError",
    "ConnectionConfig",
    "ConnectionStatus",
    "ContentPart",
    "DecodedItem",
    "Dialect",
    "Done",
    "EmbedCall",
    "EmbedDone",
    "EmbedRequest",
    "Embeddings",
    "ErrorKind",
    "EventFrame",
    "FEATURE_BATCH",
    "Failure",
    "FailureFrame",
    "FinishReason",
    "Finished",
    "FrameError",
    "GatewayConfig",
    "Goodbye",
    "Hello",
    "HttpRequest",
    "ImagePart",
    "KindPolicy",
    "MailboxConfig",
    "Message",
    "POLICIES",
    "PRESETS",
    "PROTOCOL_VERSION",
    "Ping",
    "Pong",
    "Preset",
    "Price",
    "Producer",
    "ProtocolError",
    "ProviderName",
    "RateLimitConfig",
    "RateLimitInfo",
    "ReasoningDelta",
    "RequestFailed",
    "ResponseFormat",
    "Restart",
    "RetryConfig",
    "RouteConfig",
    "RuntimeConfig",
    "RuntimeSettings",
    "SUBPROTOCOL_JSON",
    "SUBPROTOCOL_MSGPACK",
    "Secret",
    "ServedFrom",
    "ServerFrame",
    "StatusCall",
    "StatusReply",
    "StreamAccumulator",
    "StreamDecoder",
    "StreamEvent",
    "SwitchboardError",
    "Switched",
    "Target",
    "TextDelta",
    "TextPart",
    "TimeoutConfig",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolResultPart",
    "ToolUsePart",
    "Usage",
    "UsageUpdate",
    "Welcome",
    "config_from_dict",
    "config_problems",
    "connection_from_dict",
    "counts_against_breaker",
    "decode_client_frame",
    "decode_server_frame",
    "dialect_for",
    "dumps_config",
    "encode_frame",
    "is_retryable",
    "load_config",
    "loads_config",
    "missing_keys",
    "parks_limiter",
    "parse_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "policy",
    "refusal",
    "request_problem",
    "secret_enc_hook",
]
