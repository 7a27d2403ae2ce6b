-- wrk script: counts only 200 responses whose body is what it should be, and responses served
-- from fallback (X-Data-Source other than "database").
--   EXPECT_FILE=path  the exact body expected (else: any non-empty JSON array of photos)
--   ROTATE=N          rotate offsets over 0..N-1 (uncached pages); limit stays 10. A page is
--                     right when it holds the seeded rows themselves: 10 of them, ids in a
--                     row, each named `photo-<id>.jpg` as bench/run.sh seeds them (a page of
--                     the right shape with other rows, such as demo data, is wrong)
--                     (also with the database stopped: a server with a copy of the table
--                     answers its rows, which is right; answers marked as not from the database
--                     are counted in `fallback` as well)
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

-- Whether `body` is a page of 10 seeded rows: `{"id":N,"filename":"photo-N.jpg"` ten times,
-- with consecutive ids (both servers write their JSON compact, id then filename).
function seeded_rows(body)
  if string.sub(body, 1, 1) ~= "[" then return false end
  local count, last = 0, nil
  for id, named in string.gmatch(body, '{"id":(%d+),"filename":"photo%-(%d+)%.jpg"') do
    id = tonumber(id)
    if tonumber(named) ~= id or (last and id ~= last + 1) then return false end
    count, last = count + 1, id
  end
  return count == 10
end

function response(status, headers, body)
  local src = headers["x-data-source"] or headers["X-Data-Source"]
  if src ~= nil and src ~= "database" then fallback = fallback + 1 end
  local good
  if rotate then
    good = status == 200 and seeded_rows(body)
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
