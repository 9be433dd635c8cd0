-- wrk script: single events, each from a random SDK key of $KEYS_FILE (one line per key)
-- with a random device and a timestamp spread over the last 30 days; with ONE_KEY=1,
-- every event comes from the file's first key.
--
-- Both runs load the whole file and draw (and read) a random key for every request, so
-- wrk's own work is the same in both: wrk shares the machine's cores with the edge, and
-- a client that works harder for one run slows the edge in that run. (Loading only one
-- key for the one-organisation run cost wrk 1-1.5 µs less CPU per request, and Lua's
-- collector walks the key table either way.)
local keys = {}
for line in io.lines(os.getenv("KEYS_FILE")) do
  keys[#keys + 1] = line
end
local one_key = os.getenv("ONE_KEY") == "1"
local now_ms = os.time() * 1000
local month_ms = (tonumber(os.getenv("SPREAD_DAYS")) or 30) * 86400 * 1000

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

request = function()
  local drawn = keys[math.random(#keys)]
  local key = drawn
  if one_key then
    key = keys[1]
  end
  -- Read the drawn key's bytes in both runs, as formatting it into the request does.
  if drawn:byte(-1) == 0 then key = drawn end
  local ts = now_ms - math.floor(math.random() * month_ms)
  local body = string.format(
    '{"event_type":"session","event_name":"app_open","device_id":"device-%d","platform":"ios",' ..
    '"event_timestamp":%.0f,"properties":{"screen":"home","build":42}}',
    math.random(1, 1000000), ts)
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json", ["X-Api-Key"] = key}, body)
end
