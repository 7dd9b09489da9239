-- approval-swap: compare-and-set on an approval's status (pending -> approved|rejected by an approver;
-- approved -> consumed by the one credential it covers; consumed -> approved when that credential was
-- not handed out after all; approved -> expired when the broker voids it: its approver was quarantined
-- since). Leaving `pending` takes it off the task's pending set; consuming or voiding clears the
-- request index so the next identical request asks again, and giving it back sets the index again
-- (unless another approval of the same request holds it by now). An approver's decision puts its
-- `approval.decide` record (ARGV[4]) in the bucket's audit outbox in the same step (lib/outbox.lua), so a
-- process that dies before appending it loses nothing.
-- Giving a consumed approval back reads and may withdraw its twin, a key built from KEYS[1]'s base, not
-- declared: lib/slot.lua. The withdrawal is a decision like the others: its record (ARGV[5], with the twin's id
-- added here) goes to the outbox in the same step, so a pending approval never disappears from an approver's
-- list without a trace.
-- uses: common, slot, outbox
-- KEYS[1] approval hash
-- KEYS[2] the task's pending approvals (set)
-- KEYS[3] request index of this approval
-- KEYS[4] (optional) the bucket's audit outbox (zset), with ARGV[4] and ARGV[5]
-- ARGV[1] expected status
-- ARGV[2] new status
-- ARGV[3] approval id
-- ARGV[4] outbox member (tagged record JSON) added when swapped, '' for none
-- ARGV[5] consumed -> approved: the record (a JSON object without `detail`) of withdrawing a twin, '' for none
-- ARGV[6..] more field/value pairs
-- Returns 1 when swapped ({1, now} when it put ARGV[4] in the outbox at `now`; {1, now, member} when it withdrew a
-- twin and put that record's member in the outbox at `now`), 0 otherwise; a TRYAGAIN error while the bucket's
-- slot moves and a consumed approval is given back (nothing written).
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
if ARGV[1] == 'consumed' then
  local moving = slot_guard(string.sub(KEYS[1], 1, #KEYS[1] - #('approval:' .. ARGV[3])))
  if moving then return moving end
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[1] == 'pending' then redis.call('HSET', KEYS[1], 'decidedAt', now_ms()) end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[1] == 'pending' then redis.call('SREM', KEYS[2], ARGV[3]) end
if (ARGV[2] == 'consumed' or ARGV[2] == 'expired') and redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
local withdrawn
if ARGV[1] == 'consumed' then
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'expiresAt'))
  if deadline and deadline > now_ms() then
    -- The same request asked again meanwhile and got a new pending approval: the one given back covers it
    -- already, so it takes the index back and the pending one is withdrawn (an approver need not decide twice).
    -- Only a twin of the same task incarnation: a task id purged and opened again is another task, whose
    -- approvals this one must not touch (the index key names the task id, not its incarnation).
    local cur = redis.call('GET', KEYS[3])
    local mine = redis.call('HGET', KEYS[1], 'taskCreatedAt')
    if cur and cur ~= ARGV[3] then
      local other = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[3]) .. cur
      local o = redis.call('HMGET', other, 'status', 'taskCreatedAt')
      if o[1] == 'pending' and mine and o[2] == mine then
        redis.call('HSET', other, 'status', 'expired', 'decidedAt', now_ms())
        redis.call('SREM', KEYS[2], cur)
        if KEYS[4] and ARGV[5] and ARGV[5] ~= '' then
          local detail = audit_json({ 'approvalId', cur, 'coveredBy', ARGV[3] })
          withdrawn = outbox_member(now_ms(), audit_extend(ARGV[5], { 'detail', { raw = detail } }))
        end
        cur = nil
      end
    end
    -- (Pointing the index at an approval of an earlier incarnation is harmless: approval-request.lua only
    -- reuses one of the incarnation asking.)
    if not cur then redis.call('SET', KEYS[3], ARGV[3], 'PXAT', deadline) end
  end
end
if withdrawn then
  local now = now_ms()
  redis.call('ZADD', KEYS[4], 'NX', now, withdrawn)
  return { 1, now, withdrawn }
end
if KEYS[4] and ARGV[4] and ARGV[4] ~= '' then
  local now = now_ms()
  redis.call('ZADD', KEYS[4], 'NX', now, ARGV[4])
  return { 1, now }
end
return 1
