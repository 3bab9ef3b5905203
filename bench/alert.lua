-- wrk script for bench/run.sh: one firing alert per request, a distinct instance label and
-- fingerprint in every request (per wrk thread and counter), the same alert content for every
-- target. BENCH_MODE=alertmanager posts Alertmanager's own API shape (POST /api/v2/alerts, a list
-- of postable alerts); anything else posts rollbackd's webhook (Alertmanager webhook version 4).
local counter = 0
local threads = 0
local mode = "webhook"
local stamp, stamp_at = "", -1

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  mode = os.getenv("BENCH_MODE") or "webhook"
  tid = tonumber(tid) or 0
end

local function now()
  local t = os.time()
  if t ~= stamp_at then
    stamp_at = t
    stamp = os.date("!%Y-%m-%dT%H:%M:%SZ", t)
  end
  return stamp
end

local json_headers = { ["Content-Type"] = "application/json" }

function request()
  counter = counter + 1
  local fp = string.format("%02x%014x", tid, counter)
  local labels = '{"alertname":"BenchHighErrorRate","service":"web","environment":"production","severity":"page","instance":"i-' .. fp .. '"}'
  local common = '"labels":' .. labels .. ',"annotations":{"summary":"5xx above 1% on web"},"startsAt":"' .. now() .. '","generatorURL":"http://prometheus:9090/graph?g0.expr=job%3Aweb_error_ratio%3Arate5m"'
  if mode == "alertmanager" then
    return wrk.format("POST", "/api/v2/alerts", json_headers, '[{' .. common .. '}]')
  end
  local body = '{"receiver":"rollbackd","status":"firing","version":"4","groupKey":"{}:{alertname=\\"BenchHighErrorRate\\"}","truncatedAlerts":0,"externalURL":"http://alertmanager:9093","groupLabels":{"alertname":"BenchHighErrorRate"},"commonLabels":{"alertname":"BenchHighErrorRate"},"commonAnnotations":{},"alerts":[{"status":"firing",' .. common .. ',"endsAt":"0001-01-01T00:00:00Z","fingerprint":"' .. fp .. '"}]}'
  return wrk.format("POST", "/v1/webhooks/alertmanager", json_headers, body)
end
