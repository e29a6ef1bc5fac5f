"""The Lua scripts of the Redis store: versioned writes (item mirror, user records) and the
shared item statistics, with the helpers that build their arguments and parse their values."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nearline_rec.core.popularity import CountedEvent, ItemCount

# Write only when the new version is above the stored one: a replayed or reordered
# write can never replace a newer value. KEYS[1]=hash; ARGV: ver, ttl, field, value, ...
DELETED_META = json.dumps({"recommendable": False, "deleted": True})
"""The item mirror's meta of a deleted item."""

CAS_HSET = """
local cur = redis.call('HGET', KEYS[1], 'ver')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'ver', ARGV[1], unpack(ARGV, 3))
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# The user record (app/storage/codec.py): one string, version in bytes 1..8 big-endian.
# KEYS[1]=record, KEYS[2]=the user's embedding hash of the previous layout (same slot);
# ARGV: version, ttl, record. A key still in the previous layout (a hash with `ver`) is
# compared by that version, then replaced, and its embedding hash deleted.
CAS_RECORD = """
local cur = redis.pcall('GETRANGE', KEYS[1], 1, 8)
local new = tonumber(ARGV[1])
-- ARGV[4] = '1': a rebuild, which may also replace a record of the same version
local function older(v) return v > new or (v == new and ARGV[4] ~= '1') end
if type(cur) == 'table' then
  local old = redis.call('HGET', KEYS[1], 'ver')
  if old and older(tonumber(old)) then return 0 end
  redis.call('DEL', KEYS[1], KEYS[2])
elseif #cur == 8 then
  local v = 0
  for i = 1, 8 do v = v * 256 + string.byte(cur, i) end
  if older(v) then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"""


# The shared item statistics: count a batch's applied events, each once. KEYS: item counts,
# counted offsets, changed set, sequence (app/storage/keys.py, all in slot {stats}); ARGV:
# half-life, source topic, then partition, offset, item, weight, ts, rating ('' for none)
# per event, in offset order per partition. An event at or below its partition's counted
# offset was counted by an earlier try of the same batch (a write retried, a batch redone
# after a crash) and is skipped. Returns how many were counted.
COUNT_ITEMS = """
local hl = tonumber(ARGV[1])
local topic = ARGV[2]
local seq = redis.call('INCR', KEYS[4])
local front, moved, changed = {}, {}, {}
local n = 0
for i = 3, #ARGV, 6 do
  local field = topic .. '|' .. ARGV[i]
  local last = front[field]
  if last == nil then
    last = tonumber(redis.call('HGET', KEYS[2], field) or '-1')
    front[field] = last
  end
  local offset = tonumber(ARGV[i + 1])
  if offset > last then
    front[field] = offset
    moved[field] = true
    local item = ARGV[i + 2]
    local w = math.max(tonumber(ARGV[i + 3]), 0)
    local ts = tonumber(ARGV[i + 4])
    local s, t, rs, rn = 0, ts, 0, 0
    local cur = redis.call('HGET', KEYS[1], item)
    if cur then
      local a, b, c, d = string.match(cur, '(%S+) (%S+) (%S+) (%S+)')
      s, t, rs, rn = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
    end
    if ts >= t then
      s = s * 2 ^ ((t - ts) / hl) + w
      t = ts
    else
      s = s + w * 2 ^ ((ts - t) / hl)
    end
    if ARGV[i + 5] ~= '' then
      rs = rs + tonumber(ARGV[i + 5])
      rn = rn + 1
    end
    redis.call('HSET', KEYS[1], item, string.format('%.17g %.17g %.17g %.17g', s, t, rs, rn))
    changed[item] = true
    n = n + 1
  end
end
for field, _ in pairs(moved) do
  redis.call('HSET', KEYS[2], field, string.format('%.0f', front[field]))
end
for item, _ in pairs(changed) do
  redis.call('ZADD', KEYS[3], seq, item)
end
return n
"""


def count_args(counted: Sequence[CountedEvent], topic: str, half_life: float) -> list[Any]:
    """COUNT_ITEMS arguments, the events in offset order per partition."""
    args: list[Any] = [repr(float(half_life)), topic]
    for c in sorted(counted, key=lambda c: (c.partition, c.offset)):
        rating = "" if c.rating is None else repr(float(c.rating))
        args += [c.partition, c.offset, c.item_id, repr(float(c.weight)), repr(float(c.ts)), rating]
    return args


def parse_count(raw: bytes) -> ItemCount:
    score, t, rating_sum, rating_n = (float(x) for x in raw.split())
    return ItemCount(score, t, rating_sum, rating_n)
