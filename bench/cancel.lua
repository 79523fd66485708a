-- wrk script for bench/run.py and bench/soak.py: every request cancels a fresh queued scan that no other request touches.
--
--   POST /v1/accounts/<group>/signals/scans/<id>/cancel   Authorization: Bearer <key>
--
-- Scan n has the id lpad(to_hex(n), 24, '0'), exactly as bench/harness.py seeds it (string.format("%024x", n)
-- here). A run owns the ids BENCH_ID_FIRST .. BENCH_ID_FIRST + BENCH_ID_COUNT - 1; thread t of T
-- (numbered from 1) takes first + (t - 1), first + (t - 1) + T, ... so threads never share an id, and
-- no id is asked for twice. No random draws: a request never repeats another's work.
-- A thread that reaches the end of the range goes on past it (ids that were not seeded, answered 404)
-- and counts those requests; done() writes the count as "beyond_range", and the runner fails the run.
-- With BENCH_RATE set (the soak), each thread paces its connections to its share of that many requests
-- a second: a connection whose answer came early waits for the thread's next free slot (delay());
-- one that is late goes at once and the schedule does not catch up in a burst.
--
-- Environment (set by bench/harness.py):
--   BENCH_GROUP        account group id (24 hex)
--   BENCH_KEY          the API key secret (the thin peer ignores it; it is sent all the same)
--   BENCH_ID_FIRST     the first id number of this run's range
--   BENCH_ID_COUNT     how many ids the range holds
--   BENCH_THREADS      wrk's -t
--   BENCH_LATENCY_OUT  file that done() writes: "key value" lines and "p <percentile> <microseconds>"
--   BENCH_RATE         optional: requests a second for all threads together

local group = os.getenv("BENCH_GROUP")
local key = os.getenv("BENCH_KEY")
local first = tonumber(os.getenv("BENCH_ID_FIRST") or "")
local count = tonumber(os.getenv("BENCH_ID_COUNT") or "")
local threads = tonumber(os.getenv("BENCH_THREADS") or "")
local out = os.getenv("BENCH_LATENCY_OUT")
local rate = tonumber(os.getenv("BENCH_RATE") or "")

if not group or not key or not first or not count or not threads then
  error("cancel.lua needs BENCH_GROUP, BENCH_KEY, BENCH_ID_FIRST, BENCH_ID_COUNT and BENCH_THREADS")
end

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. key

local last = first + count - 1
local all_threads = {}

function setup(thread)
  table.insert(all_threads, thread)
  thread:set("thread_no", #all_threads)
end

local next_id
beyond = 0 -- global: done() reads it through thread:get()

function init(args)
  if thread_no > threads then
    error("wrk started more threads than BENCH_THREADS")
  end
  next_id = first + thread_no - 1
end

-- Pacing needs a clock finer than os.time()'s seconds: wrk's LuaJIT reaches clock_gettime through its FFI.
local now_ms
if rate then
  local ffi = require("ffi")
  ffi.cdef([[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock_id, bench_timespec *tp);
  ]])
  local CLOCK_MONOTONIC = 1
  local ts = ffi.new("bench_timespec")
  now_ms = function()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
end
local next_slot = nil

if rate then
  -- Called when an answer is complete, before the connection's next request: how long to wait.
  function delay()
    local now = now_ms()
    local interval = 1000 * threads / rate
    local slot = math.max(next_slot or now, now)
    next_slot = slot + interval
    return math.floor(slot - now)
  end
end

function request()
  local n = next_id
  next_id = next_id + threads
  if n > last then
    beyond = beyond + 1
  end
  local path = string.format("/v1/accounts/%s/signals/scans/%024x/cancel", group, n)
  return wrk.format(nil, path)
end

function done(summary, latency, requests)
  if not out then
    return
  end
  local beyond_range = 0
  for _, thread in ipairs(all_threads) do
    beyond_range = beyond_range + (thread:get("beyond") or 0)
  end
  local f = assert(io.open(out, "w"))
  -- wrk counts a response with status > 399 in errors.status; the servers send no 1xx/3xx,
  -- so requests - status errors is the number of 2xx answers.
  f:write(string.format("requests %d\n", summary.requests))
  f:write(string.format("duration_us %d\n", summary.duration))
  f:write(string.format("non2xx %d\n", summary.errors.status))
  f:write(string.format("errors_connect %d\n", summary.errors.connect))
  f:write(string.format("errors_read %d\n", summary.errors.read))
  f:write(string.format("errors_write %d\n", summary.errors.write))
  f:write(string.format("errors_timeout %d\n", summary.errors.timeout))
  f:write(string.format("beyond_range %d\n", beyond_range))
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
