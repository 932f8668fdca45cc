-- wrk script for bench/run.sh. One script, three modes (environment variable BENCH_MODE):
--
--   ingest   (default) POST /webhooks/rebilly with unique ~1.5 KB customer-created /
--            customer-updated bodies, each with a full Customer resource. About one request
--            in three is an update: a higher revision of a customer this wrk run already
--            created. Ids are unique per run (BENCH_RUN), thread and counter, so no body is a
--            duplicate. Sends Basic credentials from BENCH_AUTH ("Basic ..."), Rebilly's
--            Content-Type and User-Agent; keep-alive unless BENCH_CONNECTION_CLOSE=1.
--   customer GET /customers/{id} for random ids cus_seed_0000000 .. below
--            BENCH_SEEDED_CUSTOMERS (the ids examples/bench_seed creates), with the bearer
--            token from BENCH_TOKEN; each connection pauses BENCH_DELAY_MS (default 0) between
--            requests, for a steady read load rather than a saturating one.
--   static   the URL and headers given on wrk's command line, unchanged (list queries).
--
-- Every mode prints one machine-readable line at the end:
--   BENCH_RESULT requests=N seconds=S rps=R p50_ms=.. p99_ms=.. p999_ms=.. max_ms=..
--                non2xx=N socket_errors=N timeouts=N

local mode = os.getenv("BENCH_MODE") or "ingest"
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local auth = os.getenv("BENCH_AUTH") or ""
local token = os.getenv("BENCH_TOKEN") or ""
local seeded = tonumber(os.getenv("BENCH_SEEDED_CUSTOMERS") or "0")
local close = os.getenv("BENCH_CONNECTION_CLOSE") == "1"
local pause_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

local UPDATE_SHARE = 1 / 3
-- Customers remembered per thread for updates; later ones replace random older ones.
local MAX_REMEMBERED = 50000

local next_thread = 1
function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end

local first_names = { "Alice", "Bruno", "Chloe", "David", "Emma", "Farid", "Giulia", "Hugo",
  "Ines", "Jonas", "Karin", "Lea", "Mateo", "Nora", "Oscar", "Paula" }
local last_names = { "Martin", "Bernard", "Dubois", "Schmidt", "Rossi", "Garcia", "Smith",
  "Muller", "Lefebvre", "Moreau", "Fischer", "Romano", "Lopez", "Jones", "Laurent", "Weber" }
local places = {
  { "FR", "IDF", "Paris", "750" }, { "DE", "BE", "Berlin", "101" },
  { "US", "NY", "New York", "100" }, { "GB", "LND", "London", "EC1" },
  { "ES", "MD", "Madrid", "280" }, { "IT", "RM", "Roma", "001" },
  { "CA", "QC", "Montreal", "H2X" }, { "NL", "NH", "Amsterdam", "101" },
}
local tiers = { "bronze", "silver", "gold", "platinum" }

local template = table.concat({
  '{"eventType":"%s","customerId":"%s","_embedded":{"customer":{',
  '"id":"%s","email":"%s","firstName":"%s","lastName":"%s",',
  '"primaryAddress":{"firstName":"%s","lastName":"%s","organization":"%s Conseil SARL",',
  '"address":"%d Rue %s","address2":null,"city":"%s","region":"%s","country":"%s",',
  '"postalCode":"%s%02d","phoneNumbers":[{"label":"mobile","value":"+3361%07d","primary":true}],',
  '"emails":[{"label":"main","value":"%s","primary":true}],"dob":"19%02d-%02d-%02d",',
  '"jobTitle":"Consultant"},',
  '"defaultPaymentInstrument":{"method":"payment-card","paymentInstrumentId":"pin_%s"},',
  '"createdTime":"2025-%02d-%02dT%02d:%02d:00+00:00","updatedTime":"2026-%02d-%02dT%02d:%02d:%02d+00:00",',
  '"revision":%d,"websiteId":"web_main_01",',
  '"customFields":{"loyaltyTier":"%s","source":"web","crmId":"crm-%08x","marketingOptIn":true},',
  '"tags":[{"id":"tag_newsletter","name":"newsletter","createdTime":"2024-01-01T00:00:00+00:00",',
  '"updatedTime":"2024-01-01T00:00:00+00:00"},{"id":"tag_vip","name":"vip",',
  '"createdTime":"2024-01-01T00:00:00+00:00","updatedTime":"2024-01-01T00:00:00+00:00"}],',
  '"isEddRequired":false,"invoiceCount":%d,"paymentCount":%d,"lastPaymentTime":null,',
  '"lifetimeRevenue":{"amount":%d,"currency":"EUR"},"averageValue":{"amount":%d,"currency":"EUR"},',
  '"organizationId":"org_bench_01",',
  '"_links":[{"rel":"self","href":"https://api.rebilly.com/organizations/org_bench_01/customers/%s"}]}},',
  '"_links":[{"rel":"customer","href":"https://api.rebilly.com/organizations/org_bench_01/customers/%s"}]}',
})

local function customer_body(id, number, revision)
  local first = first_names[number % #first_names + 1]
  local last = last_names[(number * 7) % #last_names + 1]
  local place = places[(number * 3) % #places + 1]
  local email = string.lower(first) .. "." .. string.lower(last) .. "." .. id .. "@example.com"
  local event_type = revision == 1 and "customer-created" or "customer-updated"
  local payments = revision - 1
  return string.format(template,
    event_type, id,
    id, email, first, last,
    first, last, last,
    number % 200 + 1, last, place[3], place[2], place[1],
    place[4], number % 100, number % 10000000,
    email, 50 + number % 50, number % 12 + 1, number % 28 + 1,
    id,
    number % 12 + 1, number % 28 + 1, number % 24, number % 60,
    revision % 12 + 1, revision % 28 + 1, number % 24, number % 60, revision % 60,
    revision,
    tiers[revision % #tiers + 1], math.random(0, 2147483647),
    payments, payments,
    payments * 4200, payments > 0 and 4200 or 0,
    id, id)
end

local counter = 0
local customers = {}
local revisions = {}
local numbers = {}
local ingest_headers

function init(args)
  math.randomseed(os.time() + (thread_id or 0) * 7919)
  ingest_headers = {
    ["Content-Type"] = "application/json; charset=utf-8",
    ["User-Agent"] = "Rebilly/bench",
    ["Accept-Encoding"] = "gzip, deflate",
    ["Authorization"] = auth,
  }
  if close then
    ingest_headers["Connection"] = "close"
  end
end

local function ingest_request()
  counter = counter + 1
  local id, number, revision
  local known = #customers
  if known > 0 and math.random() < UPDATE_SHARE then
    local slot = math.random(known)
    revisions[slot] = revisions[slot] + 1
    id, number, revision = customers[slot], numbers[slot], revisions[slot]
  else
    -- Unique per run, thread and counter; at most 50 characters.
    id = string.format("cus_%s_t%d_%d", run, thread_id or 0, counter)
    number, revision = counter, 1
    local slot = known + 1
    if known >= MAX_REMEMBERED then
      slot = math.random(known)
    end
    customers[slot], numbers[slot], revisions[slot] = id, number, 1
  end
  return wrk.format("POST", "/webhooks/rebilly", ingest_headers, customer_body(id, number, revision))
end

local function customer_request()
  local id = string.format("cus_seed_%07d", math.random(0, math.max(seeded - 1, 0)))
  return wrk.format("GET", "/customers/" .. id, { ["Authorization"] = "Bearer " .. token })
end

if mode == "ingest" then
  request = ingest_request
elseif mode == "customer" then
  request = customer_request
  if pause_ms > 0 then
    function delay()
      return pause_ms
    end
  end
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d seconds=%.3f rps=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f " ..
    "max_ms=%.3f non2xx=%d socket_errors=%d timeouts=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    latency.max / 1000, e.status, e.connect + e.read + e.write, e.timeout))
end
