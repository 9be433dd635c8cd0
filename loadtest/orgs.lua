-- wrk script: single events, each from a random SDK key of $KEYS_FILE (one line per key)
-- with a random device and a timestamp spread over the last 30 days. The same script
-- drives the one-organisation and the many-organisation runs, so both pay the same
-- client-side cost.
local keys = {}
for line in io.lines(os.getenv("KEYS_FILE")) do
  keys[#keys + 1] = line
end
local now_ms = os.time() * 1000
local month_ms = (tonumber(os.getenv("SPREAD_DAYS")) or 30) * 86400 * 1000

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

request = function()
  local key = keys[math.random(#keys)]
  local ts = now_ms - math.floor(math.random() * month_ms)
  local body = string.format(
    '{"event_type":"session","event_name":"app_open","device_id":"device-%d","platform":"ios",' ..
    '"event_timestamp":%.0f,"properties":{"screen":"home","build":42}}',
    math.random(1, 1000000), ts)
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json", ["X-Api-Key"] = key}, body)
end
