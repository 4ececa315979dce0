-- GET /scim/v2/Users?filter=userName eq "<email>" (one email per line of the file given),
-- the lookup identity providers make before every create: round-robin over the emails
-- from a random start per thread. ADMIN_TOKEN from the environment.
local emails, i = {}, 0
local token = os.getenv("ADMIN_TOKEN") or ""
function init(args)
  for line in io.lines(args[1]) do emails[#emails + 1] = line end
  i = math.random(#emails)
end
local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end
function request()
  i = i % #emails + 1
  local filter = escape('userName eq "' .. emails[i] .. '"')
  return wrk.format("GET", "/scim/v2/Users?filter=" .. filter, { ["Authorization"] = "Bearer " .. token })
end
