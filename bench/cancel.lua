-- wrk script for bench/run.sh: authenticated cancels of random seeded scans.
--
--   POST /v1/accounts/<group>/signals/scans/<id>/cancel   Authorization: Bearer <key>
--
-- Scan n (1..BENCH_SCANS) has the id lpad(to_hex(n), 24, '0'), exactly as run.sh seeds it
-- (string.format("%024x", n) here). BENCH_ID_OFFSET shifts the ids: the warm-up uses
-- offset = BENCH_SCANS, i.e. ids that do not exist (404, nothing changes).
--
-- Environment (set by run.sh):
--   BENCH_GROUP        account group id (24 hex)
--   BENCH_KEY          the API key secret
--   BENCH_SCANS        how many scans are seeded
--   BENCH_ID_OFFSET    added to every id number (default 0)
--   BENCH_LATENCY_OUT  file that done() writes: "key value" lines and "p <percentile> <microseconds>"

local group = os.getenv("BENCH_GROUP")
local key = os.getenv("BENCH_KEY")
local scans = tonumber(os.getenv("BENCH_SCANS") or "")
local offset = tonumber(os.getenv("BENCH_ID_OFFSET") or "0")
local out = os.getenv("BENCH_LATENCY_OUT")

if not group or not key or not scans then
  error("cancel.lua needs BENCH_GROUP, BENCH_KEY and BENCH_SCANS in the environment")
end

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. key

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_no", thread_count)
end

function init(args)
  -- Different sequences per thread (thread_no is set by setup() before init()).
  math.randomseed(os.time() + 7919 * (thread_no or 0))
  for _ = 1, 10 do math.random() end
end

function request()
  local n = offset + math.random(1, scans)
  local path = string.format("/v1/accounts/%s/signals/scans/%024x/cancel", group, n)
  return wrk.format(nil, path)
end

function done(summary, latency, requests)
  if not out then
    return
  end
  local f = assert(io.open(out, "w"))
  -- wrk counts a response with status > 399 in errors.status; the service sends no 1xx/3xx,
  -- so requests - status errors is the number of 2xx answers.
  f:write(string.format("requests %d\n", summary.requests))
  f:write(string.format("duration_us %d\n", summary.duration))
  f:write(string.format("non2xx %d\n", summary.errors.status))
  f:write(string.format("errors_connect %d\n", summary.errors.connect))
  f:write(string.format("errors_read %d\n", summary.errors.read))
  f:write(string.format("errors_write %d\n", summary.errors.write))
  f:write(string.format("errors_timeout %d\n", summary.errors.timeout))
  f:write(string.format("latency_mean_us %.1f\n", latency.mean))
  f:write(string.format("latency_max_us %d\n", latency.max))
  for p = 1, 99 do
    f:write(string.format("p %d %d\n", p, latency:percentile(p)))
  end
  for _, p in ipairs({99.5, 99.9, 99.99}) do
    f:write(string.format("p %s %d\n", p, latency:percentile(p)))
  end
  f:write(string.format("p 100 %d\n", latency.max))
  f:close()
end
