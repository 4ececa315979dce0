-- PATCH /v1/users/{id} (a new name each time) as that user ("id token" per line): a write
-- with an outbox row and no password hashing, so the event pipeline's share is visible.
local rows, i, n = {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    local id, token = line:match("(%S+) (%S+)")
    rows[#rows + 1] = { id = id, token = token }
  end
  i = math.random(#rows)
end
function request()
  i = i % #rows + 1
  n = n + 1
  return wrk.format("PATCH", "/v1/users/" .. rows[i].id,
    { ["Authorization"] = "Bearer " .. rows[i].token, ["Content-Type"] = "application/json" },
    '{"name":"Bench ' .. n .. '"}')
end
