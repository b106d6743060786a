-- wrk script of `python -m loadtests capacity`: replays pre-signed requests, each one once.
--
--   wrk -t T -c C -d 10s --latency -s capacity.lua URL -- REQUESTS_FILE T
--
-- REQUESTS_FILE holds one request per line: METHOD \t PATH \t HEADERS \t BODY, the headers joined
-- by \31 (unit separator), made by loadtests/capacity.py with fresh ids and fresh signatures just
-- before the run. Thread n of T takes lines n, n+T, n+2T…, so no two connections ever send the same
-- transfer id. If a thread runs out it starts again (its transfers are then replays, answered from
-- the ledger's idempotency); capacity.py flags a run that sent more requests than the file held.
-- done() prints one line, CAPACITY_JSON {...}, that capacity.py reads.

local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

local prepared = {}
local position = 0

local function split(text, separator)
   local parts = {}
   local start = 1
   while true do
      local found = string.find(text, separator, start, true)
      if not found then
         table.insert(parts, string.sub(text, start))
         return parts
      end
      table.insert(parts, string.sub(text, start, found - 1))
      start = found + #separator
   end
end

function init(args)
   local path, threads = args[1], tonumber(args[2])
   local index = 0
   for line in io.lines(path) do
      if index % threads == thread_index then
         local fields = split(line, "\t")
         local headers = {}
         if fields[3] ~= "" then
            for _, header in ipairs(split(fields[3], "\31")) do
               local colon = string.find(header, ": ", 1, true)
               headers[string.sub(header, 1, colon - 1)] = string.sub(header, colon + 2)
            end
         end
         local body = fields[4]
         if body == "" then body = nil end
         table.insert(prepared, wrk.format(fields[1], fields[2], headers, body))
      end
      index = index + 1
   end
end

function request()
   position = position + 1
   if position > #prepared then
      position = 1
   end
   return prepared[position]
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'CAPACITY_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
      '"p50_us": %d, "p99_us": %d}\n',
      summary.requests, summary.duration, errors.status,
      errors.connect + errors.read + errors.write + errors.timeout,
      latency:percentile(50), latency:percentile(99)))
end
