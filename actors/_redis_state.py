"""The Redis `Store`: shared limits, breakers and usage in Redis, as two Lua scripts.

Why Lua: a draw from a shared bucket must read the level, decide and write it back with no
other process in between. A Lua script runs atomically in Redis, in one round trip, with the
store's own clock (``TIME``), so processes never have to agree on a clock. The two scripts are
line-by-line translations of `actors._shared_limits.StoreConnection.take` and ``.sync``; the
tests run both on the same calls with an exact ``now`` and compare the answers. Requests and
replies are JSON (``cjson`` in the script, msgspec here); every time that crosses the wire is
a duration.

The client is coredis 6 (it runs on anyio, hence on trio), imported only when a runtime uses
Redis (its import costs ~0.35 s), with a small connection pool, no retries of its own (the
caller bounds every call by ``state_timeout_s`` and decides what a failure means) and both
connect and read timeouts set to that bound too.

Keys, per connection (the name percent-encoded, inside a hash tag so a cluster would keep
one connection's keys in one slot)::

    switchboard:{<name>}:state   hash: buckets (r_*, t_*), learned buckets (lr_*, lt_*),
                                 park, breaker (br, br_u, br_v)
    switchboard:{<name>}:procs   hash: process id -> registration expiry
    switchboard:{<name>}:slots   hash: process id -> concurrency slots held
    switchboard:{<name>}:seq     hash: process id -> last batch applied
    switchboard:{<name>}:usage   hash: i:/o:/wi:/wo:/c:<model> -> tokens in, out, wasted in,
                                 wasted out, cost

Every foreign exception of a call (coredis, anyio, sockets, a reply we cannot decode) is
translated here, at one boundary, into `StoreUnavailable`: whatever goes wrong talking to the
store, requests go on with local state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import msgspec

from protocol._config import Secret
from protocol._state_url import StateUrl

from ._shared_limits import (
    PROCESS_TTL_S,
    SLACK,
    SyncReply,
    SyncRequest,
    TakeReply,
    TakeRequest,
)
from ._shared_state import StoreUnavailable

MAX_CONNECTIONS = 4
PREFIX = "switchboard"

_COMMON = """
local function fmt(x) return string.format('%.17g', x) end
local function hash(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local function clock(req)
  if req.now ~= nil then return req.now end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function prune(procs_key, slots_key, now)
  local procs = hash(procs_key)
  for pid, expiry in pairs(procs) do
    if tonumber(expiry) <= now then
      redis.call('HDEL', procs_key, pid)
      redis.call('HDEL', slots_key, pid)
    end
  end
end
local function refill(b, now)
  if now > b.s then
    local level = b.l + b.r * (now - b.s)
    if b.c ~= nil and level >= b.c then level = b.c end
    b.l = level
    b.s = now
  end
end
local function add(b, amount)
  local level = b.l + amount
  if b.c ~= nil and level >= b.c then level = b.c end
  b.l = level
end
local function cost(b, amount)
  if b.c == nil or amount <= b.c then return amount end
  return b.c
end
-- ours: the configured bucket of one kind ('r' or 't'), created full
local function ours(h, p, limit, now)
  if limit <= 0 then return nil end
  local b
  if h[p .. '_l'] == nil then
    b = {l = limit, s = now}
  else
    b = {l = tonumber(h[p .. '_l']), s = tonumber(h[p .. '_s'])}
  end
  b.r = limit / 60.0
  b.c = limit
  if b.l > limit then b.l = limit end
  refill(b, now)
  return b
end
local function save_ours(key, p, b)
  if b then redis.call('HSET', key, p .. '_l', fmt(b.l), p .. '_s', fmt(b.s)) end
end
-- a learned bucket ('lr' or 'lt'): nil when absent, false when it just expired
local function learned(h, p, now)
  if h[p .. '_l'] == nil then return nil end
  local b = {l = tonumber(h[p .. '_l']), s = tonumber(h[p .. '_s']), r = tonumber(h[p .. '_r']),
             e = tonumber(h[p .. '_e'])}
  if h[p .. '_c'] ~= nil then b.c = tonumber(h[p .. '_c']) end
  if now >= b.e then return false end
  refill(b, now)
  return b
end
local function save_learned(key, p, b)
  if b == false then
    redis.call('HDEL', key, p .. '_l', p .. '_s', p .. '_r', p .. '_c', p .. '_e')
  elseif b then
    redis.call('HSET', key, p .. '_l', fmt(b.l), p .. '_s', fmt(b.s), p .. '_r', fmt(b.r),
               p .. '_e', fmt(b.e))
    if b.c == nil then redis.call('HDEL', key, p .. '_c')
    else redis.call('HSET', key, p .. '_c', fmt(b.c)) end
  end
end
"""

TAKE_LUA = (
    _COMMON
    + """
local req = cjson.decode(ARGV[1])
local now = clock(req)
local K_STATE, K_PROCS, K_SLOTS = KEYS[1], KEYS[2], KEYS[3]
prune(K_PROCS, K_SLOTS, now)
redis.call('HSET', K_PROCS, req.pid, fmt(now + (req.ttl or __TTL__)))
local conc = req.concurrency or 0
local held = req.held or 0
local need_s = req.need_slots or 0
if conc > 0 then
  redis.call('HSET', K_SLOTS, req.pid, held)
  if need_s > 0 then
    local used = 0
    for _, v in ipairs(redis.call('HVALS', K_SLOTS)) do used = used + tonumber(v) end
    if used + need_s > conc then return cjson.encode({reason = 'concurrency'}) end
  end
end
local h = hash(K_STATE)
local rpm, tpm = req.rpm or 0, req.tpm or 0
local our_r = ours(h, 'r', rpm, now)
local our_t = ours(h, 't', tpm, now)
local lr = learned(h, 'lr', now)
local lt = learned(h, 'lt', now)
save_ours(K_STATE, 'r', our_r)
save_ours(K_STATE, 't', our_t)
save_learned(K_STATE, 'lr', lr)
save_learned(K_STATE, 'lt', lt)
local use_lr, use_lt = nil, nil
if rpm > 0 and lr then use_lr = lr end
if tpm > 0 and lt then use_lt = lt end
local wait, reason = 0.0, 'parked'
local park = tonumber(h.park)
if park ~= nil and park > now then wait = park - now end
local need_r, need_t = req.need_requests or 0, req.need_tokens or 0
local function check(b, c, why)
  if b and c > 0 then
    local x
    local k = cost(b, c)
    if b.l >= k - SLACK then
      x = 0.0
    elseif b.r <= 0.0 then
      x = b.e - now
    else
      x = (k - b.l) / b.r
      if b.e ~= nil and now + x >= b.e then x = b.e - now end
    end
    if x > wait then
      wait = x
      reason = why
    end
  end
end
check(our_r, need_r, 'requests')
check(use_lr, need_r, 'requests')
check(our_t, need_t, 'tokens')
check(use_lt, need_t, 'tokens')
if wait > 0.0 then return cjson.encode({wait = wait, reason = reason}) end
local function extra(wanted, need, a, b)
  if wanted == nil or wanted <= 0 then return 0 end
  local m = nil
  if a then m = a.l - need end
  if b then
    local x = b.l - need
    if m == nil or x < m then m = x end
  end
  if m == nil then return 0 end
  local spare = math.floor(m)
  if spare < wanted then wanted = spare end
  if wanted < 0 then return 0 end
  return wanted
end
local er = extra(req.extra_requests, need_r, our_r, use_lr)
local et = extra(req.extra_tokens, need_t, our_t, use_lt)
local function draw(b, amount)
  if b and amount > 0 then add(b, -cost(b, amount)) end
end
draw(our_r, need_r + er)
draw(use_lr, need_r + er)
draw(our_t, need_t + et)
draw(use_lt, need_t + et)
save_ours(K_STATE, 'r', our_r)
save_ours(K_STATE, 't', our_t)
save_learned(K_STATE, 'lr', lr)
save_learned(K_STATE, 'lt', lt)
local slots = 0
if conc > 0 then
  local used = 0
  for _, v in ipairs(redis.call('HVALS', K_SLOTS)) do used = used + tonumber(v) end
  local spare = conc - used - need_s
  local extra_s = req.extra_slots or 0
  if spare < extra_s then extra_s = spare end
  if extra_s < 0 then extra_s = 0 end
  slots = need_s + extra_s
  redis.call('HSET', K_SLOTS, req.pid, held + slots)
end
return cjson.encode({ok = true, requests = need_r + er, tokens = need_t + et, slots = slots})
"""
).replace("__TTL__", repr(PROCESS_TTL_S)).replace("SLACK", repr(SLACK))

SYNC_LUA = (
    _COMMON
    + """
local req = cjson.decode(ARGV[1])
local now = clock(req)
local K_STATE, K_PROCS, K_SLOTS, K_SEQ, K_USAGE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
prune(K_PROCS, K_SLOTS, now)
local held = req.held or 0
if held < 0 then
  redis.call('HDEL', K_PROCS, req.pid)
  redis.call('HDEL', K_SLOTS, req.pid)
else
  redis.call('HSET', K_PROCS, req.pid, fmt(now + (req.ttl or __TTL__)))
  redis.call('HSET', K_SLOTS, req.pid, held)
end
local h = hash(K_STATE)
local our_r = ours(h, 'r', req.rpm or 0, now)
local our_t = ours(h, 't', req.tpm or 0, now)
local applied = tonumber(redis.call('HGET', K_SEQ, req.pid)) or 0
local park = tonumber(h.park)
local park_changed = false
local new_lr, new_lt = 'keep', 'keep'
local function learn(remaining, limit, reset)
  if reset ~= nil and (reset <= 0.0 or reset ~= reset or reset == math.huge) then return false end
  if limit ~= nil and remaining >= limit then return false end
  local horizon = 60.0
  if reset ~= nil then horizon = reset end
  if limit == nil then
    return {l = remaining, s = now, r = 0.0, e = now + horizon}
  end
  return {l = remaining, s = now, r = (limit - remaining) / horizon, c = limit, e = now + horizon}
end
for _, d in ipairs(req.deltas or {}) do
  if d.seq > applied then
    applied = d.seq
    if our_r and d.requests ~= nil and d.requests ~= 0 then add(our_r, d.requests) end
    if our_t and d.tokens ~= nil and d.tokens ~= 0 then add(our_t, d.tokens) end
    if d.park ~= nil and (park == nil or now + d.park > park) then
      park = now + d.park
      park_changed = true
    end
    local o = d.observed
    if o ~= nil then
      if o.remaining_requests ~= nil then
        new_lr = learn(o.remaining_requests, o.limit_requests, o.reset_requests)
      end
      if o.remaining_tokens ~= nil then
        new_lt = learn(o.remaining_tokens, o.limit_tokens, o.reset_tokens)
      end
    end
    if d.usage ~= nil then
      for model, u in pairs(d.usage) do
        redis.call('HINCRBY', K_USAGE, 'i:' .. model, u.input or 0)
        redis.call('HINCRBY', K_USAGE, 'o:' .. model, u.output or 0)
        redis.call('HINCRBY', K_USAGE, 'wi:' .. model, u.wasted_input or 0)
        redis.call('HINCRBY', K_USAGE, 'wo:' .. model, u.wasted_output or 0)
        redis.call('HINCRBYFLOAT', K_USAGE, 'c:' .. model, fmt(u.cost or 0))
      end
    end
  end
end
if held < 0 then
  redis.call('HDEL', K_SEQ, req.pid)
else
  redis.call('HSET', K_SEQ, req.pid, applied)
end
save_ours(K_STATE, 'r', our_r)
save_ours(K_STATE, 't', our_t)
if new_lr ~= 'keep' then save_learned(K_STATE, 'lr', new_lr) end
if new_lt ~= 'keep' then save_learned(K_STATE, 'lt', new_lt) end
if park_changed then redis.call('HSET', K_STATE, 'park', fmt(park)) end
local br = h.br or 'closed'
local bu = tonumber(h.br_u) or 0
local bv = tonumber(h.br_v) or 0
local p = req.breaker
if p ~= nil then
  local changed = false
  if p.state == 'open' then
    if br ~= 'forced_open' then
      local u = now + (p.remaining or 0)
      if br == 'open' and bu > u then u = bu end
      br = 'open'
      bu = u
      changed = true
    end
  elseif p.state == 'forced_open' then
    if br ~= 'forced_open' then
      br = 'forced_open'
      changed = true
    end
  elseif br ~= 'closed' and bv == (p.base or 0) then
    br = 'closed'
    changed = true
  end
  if changed then
    bv = bv + 1
    redis.call('HSET', K_STATE, 'br', br, 'br_u', fmt(bu), 'br_v', bv)
  end
end
local remaining = 0.0
if br == 'open' and bu - now > 0.0 then remaining = bu - now end
local parked = 0.0
if park ~= nil and park > now then parked = park - now end
local reply = {breaker = br, breaker_remaining = remaining, version = bv, parked = parked,
               applied = applied}
if req.totals then
  local totals = {}
  local index = {i = 1, o = 2, wi = 3, wo = 4, c = 5}
  local flat = redis.call('HGETALL', K_USAGE)
  for i = 1, #flat, 2 do
    local kind, model = string.match(flat[i], '^(%a+):(.*)$')
    if kind ~= nil and index[kind] ~= nil then
      local row = totals[model]
      if row == nil then
        row = {0, 0, 0, 0, 0}
        totals[model] = row
      end
      row[index[kind]] = tonumber(flat[i + 1])
    end
  end
  reply.totals = totals
end
return cjson.encode(reply)
"""
).replace("__TTL__", repr(PROCESS_TTL_S))


def keys(name: str, prefix: str = PREFIX) -> list[str]:
    """The Redis keys of connection *name*: state, procs, slots, seq, usage."""
    tag = f"{prefix}:{{{quote(name, safe='')}}}"
    return [f"{tag}:state", f"{tag}:procs", f"{tag}:slots", f"{tag}:seq", f"{tag}:usage"]


_take_decoder = msgspec.json.Decoder(TakeReply)
_sync_decoder = msgspec.json.Decoder(SyncReply)
_encoder = msgspec.json.Encoder()


class RedisStore:
    """Shared state in one Redis database (see the module header). *password* is a
    `Secret` (never part of the URL, so it cannot leak through a config dump or a log
    line); *timeout* bounds connecting and reading."""

    kind = "redis"

    def __init__(
        self,
        url: StateUrl,
        *,
        password: Secret | None = None,
        timeout: float = 0.25,
        prefix: str = PREFIX,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.url = url
        self._password = password
        self._timeout = timeout
        self._prefix = prefix
        self._max_connections = max_connections
        self._client: Any = None
        self._take: Any = None
        self._sync: Any = None
        self._keys: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.url.display!r})"

    @property
    def client(self) -> Any:
        """The open coredis client (``None`` outside `open`), for other users of the same
        store."""
        return self._client

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        import coredis
        from coredis.retry import NoRetryPolicy

        url = self.url
        client = coredis.Redis(
            connection_pool_cls=_pool_class(),
            host=url.host,
            port=url.port,
            db=url.db,
            username=url.username,
            password=None if self._password is None else self._password.reveal(),
            ssl=url.tls,
            connect_timeout=self._timeout,
            stream_timeout=self._timeout,
            max_connections=self._max_connections,
            retry_policy=NoRetryPolicy(),
            client_name="switchboard",
        )
        async with client:
            self._client = client
            self._take = client.register_script(TAKE_LUA)
            self._sync = client.register_script(SYNC_LUA)
            try:
                yield
            finally:
                self._client = self._take = self._sync = None

    def _keys_of(self, name: str) -> list[str]:
        found = self._keys.get(name)
        if found is None:
            found = self._keys[name] = keys(name, self._prefix)
        return found

    async def take(self, name: str, request: TakeRequest) -> TakeReply:
        script = self._take
        if script is None:
            raise StoreUnavailable("not connected")
        try:
            raw = await script(keys=self._keys_of(name)[:3], args=[_encoder.encode(request)])
            return _take_decoder.decode(raw)
        except Exception as exc:
            raise _unavailable(exc) from None

    async def sync(self, name: str, request: SyncRequest) -> SyncReply:
        script = self._sync
        if script is None:
            raise StoreUnavailable("not connected")
        try:
            raw = await script(keys=self._keys_of(name), args=[_encoder.encode(request)])
            return _sync_decoder.decode(raw)
        except Exception as exc:
            raise _unavailable(exc) from None

    async def ping(self) -> None:
        client = self._client
        if client is None:
            raise StoreUnavailable("not connected")
        try:
            await client.ping()
        except Exception as exc:
            raise _unavailable(exc) from None


_POOL: Any = None


def _pool_class() -> Any:
    """coredis's pool, making connections that close their buffers when they end.

    A coredis 6.9 connection creates its anyio memory streams when it is constructed but
    closes them only once it has connected; every failed connection attempt (Redis down)
    would leave three pairs to the garbage collector, which reports each as a
    `ResourceWarning`."""
    global _POOL
    if _POOL is None:
        from coredis.connection import TCPConnection
        from coredis.pool import ConnectionPool

        class _Connection(TCPConnection):
            async def run(self, **kwargs: Any) -> None:
                try:
                    await super().run(**kwargs)
                finally:
                    for stream in (
                        self._write_buffer_in,
                        self._write_buffer_out,
                        self._push_message_buffer_in,
                        self._push_message_buffer_out,
                        self._streamed_message_buffer_in,
                        self._streamed_message_buffer_out,
                    ):
                        stream.close()

        class _Pool(ConnectionPool[Any]):
            def __init__(self, **kwargs: Any) -> None:
                if kwargs.get("connection_class") is TCPConnection:
                    kwargs["connection_class"] = _Connection
                super().__init__(**kwargs)

        _POOL = _Pool
    return _POOL


def _unavailable(exc: BaseException) -> StoreUnavailable:
    """The one translation of a failed call: coredis errors (all derive from
    ``coredis.exceptions.RedisError``), socket and anyio stream errors, exception groups from
    coredis's task groups, and replies that do not decode."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _unavailable(exc.exceptions[0])
    text = str(exc).strip()
    return StoreUnavailable(f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__)
