-- Library prepended to scripts that declare `-- uses: common, outbox`: the chain's audit outbox
-- (Keys.auditOutbox), a sorted set of audit records (score: Redis ms). A script that decides something (ends
-- leases, a task) adds the decision's record here in the same step, so the record cannot be lost with the
-- process that was to append it: audit-append.lua writes a record that names its member only while the member
-- is here and removes it in that step, and recovery (src/audit/outbox.ts) appends what a dead process left.
-- The outbox is transient: each member leaves once its record is written.
--
-- A member is `<tag> <record JSON>` (src/audit/outbox-member.ts): the tag makes two decisions with identical
-- records two members (a sorted set keeps one of equal members, and the second decision's record would be
-- lost). Records built here are tagged with the script's Redis time: no subject (a lease, a task incarnation)
-- is decided twice in one millisecond. Records a caller builds carry the caller's tag.

-- The tag of records a script built at `now` (Redis ms).
local function outbox_tag(now) return string.format('%d', now) end

-- A member of the outbox: a record built at `now` with its tag.
local function outbox_member(now, json) return outbox_tag(now) .. ' ' .. json end

local function outbox_key(base) return base .. 'audit-outbox' end

-- A JSON string. Ids and names the broker writes (task ids, role names, lease ids, reasons) need no escaping:
-- written as they are, which is cheaper than cjson for the thousands of records one sweep can write; anything
-- else is encoded by cjson.
local function json_str(s)
  if string.find(s, '^[%w%.:_~%-]*$') then return '"' .. s .. '"' end
  return cjson.encode(s)
end

-- A record's JSON object from a flat list of key/value pairs, in that order. A false value is left out (a
-- field HMGET found missing); strings are encoded by cjson, numbers written as integers, and a table
-- `{ raw = json }` is written as it is (a nested object built with audit_json).
local function audit_json(kv)
  local parts = {}
  for i = 1, #kv, 2 do
    local v = kv[i + 1]
    if v then
      local enc
      if type(v) == 'number' then
        enc = string.format('%d', v)
      elseif type(v) == 'table' then
        enc = v.raw
      else
        enc = json_str(v)
      end
      parts[#parts + 1] = '"' .. kv[i] .. '":' .. enc
    end
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- `json` (a non-empty JSON object, e.g. a record the caller built) with the fields of `kv` added at its end.
local function audit_extend(json, kv)
  local extra = audit_json(kv)
  if extra == '{}' then return json end
  return string.sub(json, 1, -2) .. ',' .. string.sub(extra, 2)
end

-- The outbox member of a lease the broker ended at `now` (`action` lease.expire or lease.revoke, actor `broker`),
-- tagged AuditEvent JSON: the part before the lease id (tag included) is built once per task and role (`cache`,
-- a table per script run), so a page of 1000 leases of one task costs a concatenation per lease. `task`/`role`
-- false: left out.
local function lease_record(cache, now, action, task, role, id, reason)
  local key = (task or '') .. ' ' .. (role or '')
  local head = cache[key]
  if not head then
    head = outbox_tag(now) .. ' {"action":"' .. action .. '","actor":"broker","decision":"ok"'
      .. (task and (',"taskId":' .. json_str(task)) or '')
      .. (role and (',"role":' .. json_str(role)) or '')
      .. ',"leaseId":'
    cache[key] = head
  end
  return head .. json_str(id) .. ',"reason":' .. json_str(reason) .. '}'
end

-- Adds members to the outbox at `now`: one ZADD per 250 (unpack's argument limit). NX: a member already there
-- keeps its time (a member is one decision: a caller that runs the same step again adds nothing new).
local function outbox_add(base, now, members)
  local key = outbox_key(base)
  for i = 1, #members, 250 do
    local args = {}
    for j = i, math.min(i + 249, #members) do
      args[#args + 1] = now
      args[#args + 1] = members[j]
    end
    redis.call('ZADD', key, 'NX', unpack(args))
  end
end
