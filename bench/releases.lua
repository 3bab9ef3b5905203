-- wrk script for bench/releases.py: replays pre-made requests, one per line of
-- $BENCH_REQUESTS-<thread>.tsv as `path<TAB>header: value|header: value<TAB>body`, so every
-- request records a new release (the signatures were computed ahead, outside the measurement).
local threads = 0
local lines = {}
local n, i = 0, 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  local f = assert(io.open(os.getenv("BENCH_REQUESTS") .. "-" .. tid .. ".tsv"))
  for line in f:lines() do
    local path, headers, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    local h = { ["Content-Type"] = "application/json" }
    for k, v in headers:gmatch("([^|:]+): ([^|]*)") do h[k] = v end
    n = n + 1
    lines[n] = wrk.format("POST", path, h, body)
  end
  f:close()
end

function request()
  i = i % n + 1
  return lines[i]
end
