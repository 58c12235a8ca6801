-- Argo CD health of an orgkeeper.dev ApiKey, read from the kstatus conditions the controller writes
-- (Ready, Reconciling, Stalled) and status.observedGeneration. Runs in Argo CD's Lua 5.1 VM; the same logic
-- for each orgkeeper kind, so the four scripts differ only where a kind needs it.
local hs = {}

local function condition(name)
  for _, c in ipairs(obj.status.conditions) do
    if c.type == name then
      return c
    end
  end
  return nil
end

-- "Reason: message", for the Argo CD UI.
local function describe(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if reason ~= "" then
    return reason
  end
  return message
end

-- Reasons that waiting cannot fix: the resource (or its Secret) has to change. The others (UnknownAccount,
-- OrganizationNotFound, EnvironmentNotFound, KeyLimitReached) are retried and may resolve on their own.
local terminal = {
  Duplicate = true,
  ImmutableField = true,
  InvalidSpec = true,
  SecretConflict = true,
  SecretMissing = true,
  Revoked = true,
}

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted: waiting for orgkeeper to clean up the store"
  return hs
end

if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for orgkeeper to reconcile"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for orgkeeper to reconcile generation " .. generation
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local ready = condition("Ready")
-- A key revoked on purpose (spec.revoked: true) has reached the state Git declares.
local revokedAsDeclared = ready ~= nil and ready.reason == "Revoked" and obj.spec ~= nil and obj.spec.revoked == true

if ready ~= nil and ready.status == "False" and terminal[ready.reason] and not revokedAsDeclared then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

if ready ~= nil and (ready.status == "True" or revokedAsDeclared) then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
