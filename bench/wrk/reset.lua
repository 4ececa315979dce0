-- POST /v1/password-resets cycling through a list of emails (one per line): the seeded
-- accounts, or addresses that have none.
local emails, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do emails[#emails + 1] = line end
  i = math.random(#emails)
end
function request()
  i = i % #emails + 1
  local body = '{"email":"' .. emails[i] .. '"}'
  return wrk.format("POST", "/v1/password-resets", { ["Content-Type"] = "application/json" }, body)
end
