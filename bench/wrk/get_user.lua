-- GET /v1/users/{id} as that user ("id token" per line).
local rows, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do
    local id, token = line:match("(%S+) (%S+)")
    rows[#rows + 1] = { id = id, token = token }
  end
  i = math.random(#rows)
end
function request()
  i = i % #rows + 1
  return wrk.format("GET", "/v1/users/" .. rows[i].id, { ["Authorization"] = "Bearer " .. rows[i].token })
end
