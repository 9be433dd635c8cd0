-- wrk script: POST the body in $BODY_FILE with the SDK key in $EDGE_KEY.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("EDGE_KEY")
if key and key ~= "" then wrk.headers["X-Api-Key"] = key end
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
