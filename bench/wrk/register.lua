-- POST /v1/users with a unique email per request.
local n, tag = 0, ""
function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  tag = tostring(math.random(1, 1e9))
end
function request()
  n = n + 1
  local body = '{"email":"r' .. tag .. '-' .. n .. '@bench.example","name":"Bench","password":"bench password 1"}'
  return wrk.format("POST", "/v1/users", { ["Content-Type"] = "application/json" }, body)
end
