-- wrk script for the weather protocol (bench/weather.sh uses it when plaza-weather's own
-- load generator is not at hand).  One wrk process runs one kind of request:
--
--   wrk -t1 -c16 -d5s -s bench/peers/weather.lua http://127.0.0.1:8080 -- post 10 4
--   wrk -t1 -c16 -d5s -s bench/peers/weather.lua http://127.0.0.1:8080 -- get 0 1
--
-- args: kind (post | get), batch (readings per POST), delay_ms (pause each connection
-- makes before each request: the rate is then at most connections * 1000 / delay_ms per
-- second).  wrk is closed loop: a connection waits for its answer before the pause, so a
-- server that stalls is sent less and its latency is under-reported (coordinated omission);
-- plaza-weather load is open loop and has no such bias.
--
-- At the end it prints one line that bench/weather.sh reads:
--   WEATHER kind=post requests=N seconds=S p50_us=.. p99_us=.. p999_us=.. max_us=.. non2xx=N errors=N

local kind, batch, pause = "get", 10, 0
local threads = {}

-- Runs in the main script state, which never sees init's args: done() asks a thread.
function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   kind = args[1] or "get"
   batch = tonumber(args[2] or "10")
   pause = tonumber(args[3] or "0")
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function delay()
   return pause
end

function request()
   if kind == "post" then
      local parts = {}
      for i = 1, batch do
         parts[i] = string.format('{"city":"city%02d","temperature":%.1f}',
                                  math.random(0, 63), math.random(-200, 400) / 10)
      end
      local body = '{"readings":[' .. table.concat(parts, ",") .. ']}'
      return wrk.format("POST", "/readings", {["Content-Type"] = "application/json"}, body)
   end
   return wrk.format("GET", string.format("/weather/city%02d", math.random(0, 63)))
end

function done(summary, latency, requests)
   local e = summary.errors
   kind = threads[1] and threads[1]:get("kind") or kind
   io.write(string.format("WEATHER kind=%s requests=%d seconds=%.3f p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f non2xx=%d errors=%d\n",
                          kind, summary.requests, summary.duration / 1e6,
                          latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
                          latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
