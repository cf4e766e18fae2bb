-- wrk script for the weather service (PROTOCOL.md): one request in five is
-- a POST of 10 readings to random cities, the others GET a random city.
-- wrk is closed loop (each connection waits for its answer before sending
-- again), so its latencies are not comparable with `plaza-weather load`,
-- which is open loop; it is here as a second, independent client.
math.randomseed(os.time())
local n = 0

request = function()
  n = n + 1
  if n % 5 == 0 then
    local parts = {}
    for i = 1, 10 do
      parts[i] = string.format('{"city":"city%02d","temperature":%.1f}', math.random(0, 63),
                               math.random(-100, 350) / 10)
    end
    local body = '{"readings":[' .. table.concat(parts, ",") .. ']}'
    return wrk.format("POST", "/readings", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", string.format("/weather/city%02d", math.random(0, 63)))
end

done = function(summary, latency, requests)
  io.write(string.format("non-2xx answers: %d\n", summary.errors.status))
end
