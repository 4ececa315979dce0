-- PATCH /v1/users/{id} (a new name each time) as that user ("id token version" per line):
-- a write with an outbox row and no password hashing, so the event pipeline's share shows.
-- Every change needs the user's current ETag: each wrk thread owns its own users (so no
-- two threads race on one; WRK_THREADS must be wrk's -t), walks them round-robin (a user
-- comes round again only after all of the thread's users, far more than its connections in
-- flight) and learns each new version from the response body.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

local rows, versions, i, n = {}, {}, 0, 0
function init(args)
  local nthreads, k = tonumber(os.getenv("WRK_THREADS") or "1"), 0
  for line in io.lines(args[1]) do
    local id, token, version = line:match("(%S+) (%S+) (%d+)")
    k = k + 1
    if (k - 1) % nthreads == tid - 1 then
      rows[#rows + 1] = { id = id, token = token }
      versions[id] = tonumber(version)
    end
  end
end
function request()
  i = i % #rows + 1
  n = n + 1
  local r = rows[i]
  return wrk.format("PATCH", "/v1/users/" .. r.id,
    { ["Authorization"] = "Bearer " .. r.token, ["Content-Type"] = "application/json",
      ["If-Match"] = '"' .. versions[r.id] .. '"' },
    '{"name":"Bench ' .. tid .. "-" .. n .. '"}')
end
function response(status, headers, body)
  local id, version = body:match('"id":"([^"]+)".-"version":(%d+)')
  if id and versions[id] then versions[id] = tonumber(version) end
end
