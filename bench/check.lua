-- wrk script: counts only 200 responses whose body is what it should be, and responses served
-- from fallback (X-Data-Source other than "database").
--   EXPECT_FILE=path  the exact body expected (else: any non-empty JSON array of photos)
--   ROTATE=N          rotate offsets over 0..N-1 (uncached pages); limit stays 10
--   OUTAGE=1          the database is down: any JSON array is right (fallback pages past the
--                     embedded 13 photographs are empty)
local expected = nil
local path = os.getenv("EXPECT_FILE")
if path and path ~= "" then
  local f = assert(io.open(path, "rb")); expected = f:read("*a"); f:close()
end
local rotate = tonumber(os.getenv("ROTATE") or "")
local threads = {}
local id = 0

function setup(thread)
  id = id + 1
  thread:set("tid", id)
  table.insert(threads, thread)
end

function init(args)
  ok, bad, fallback, n = 0, 0, 0, tid * 7919
end

if rotate then
  function request()
    n = n + 1
    local off = (n * 104729) % rotate
    return wrk.format("GET", "/api/images?limit=10&offset=" .. off)
  end
end

function response(status, headers, body)
  local src = headers["x-data-source"] or headers["X-Data-Source"]
  if src ~= nil and src ~= "database" then fallback = fallback + 1 end
  local good
  if os.getenv("OUTAGE") == "1" then
    good = status == 200 and string.sub(body, 1, 1) == "["  -- any page, [] past the end
  elseif expected then
    good = status == 200 and body == expected
  else
    good = status == 200 and string.sub(body, 1, 7) == '[{"id":'
  end
  if good then ok = ok + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
  local o, b, f = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); b = b + t:get("bad"); f = f + t:get("fallback")
  end
  io.write(string.format("checked: ok=%d bad=%d fallback=%d\n", o, b, f))
end
