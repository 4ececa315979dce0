-- PATCH /scim/v2/Groups/<GROUP_ID>: add one member, then remove it (Okta's
-- `members[value eq "…"]` form), alternating, for users read from the file given (one id
-- per line, none of them in the group to begin with). Without If-Match, as identity
-- providers send it; the response leaves the members out (excludedAttributes=members),
-- so that what is measured is the change, not the rendering of 10,000 members.
local ids, i, adding = {}, 0, true
local token = os.getenv("ADMIN_TOKEN") or ""
local group = os.getenv("GROUP_ID") or ""
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  i = math.random(#ids)
end
function request()
  local body
  if adding then
    i = i % #ids + 1
    body = '{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"add","path":"members","value":[{"value":"' .. ids[i] .. '"}]}]}'
  else
    body = '{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"remove","path":"members[value eq \\"' .. ids[i] .. '\\"]"}]}'
  end
  adding = not adding
  return wrk.format("PATCH", "/scim/v2/Groups/" .. group .. "?excludedAttributes=members",
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/scim+json" }, body)
end
