-- POST /orders as the user whose access token is in $TOKEN, each connection pausing $PAUSE_MS
-- milliseconds between requests: with C connections, about C * 1000 / PAUSE_MS orders per second.
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"items": [{"name": "Espresso beans", "quantity": 2, "price": "12.50"}]}'

local pause = tonumber(os.getenv("PAUSE_MS"))

function delay()
  return pause
end
