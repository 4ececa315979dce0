-- POST /v1/sessions for seeded users (one email per line, shared password).
local emails, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do emails[#emails + 1] = line end
  i = math.random(#emails)
end
function request()
  i = i % #emails + 1
  local body = '{"email":"' .. emails[i] .. '","password":"bench password 1"}'
  return wrk.format("POST", "/v1/sessions", { ["Content-Type"] = "application/json" }, body)
end
