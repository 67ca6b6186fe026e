-- POST /orders as the user whose access token is in $TOKEN, each connection pausing $PAUSE_MS
-- milliseconds between requests on average: with C connections, about C * 1000 / PAUSE_MS orders per second.
-- Each pause is drawn between half and one and a half times $PAUSE_MS, so that the connections, which all
-- start at once, spread out instead of sending their requests in bursts.
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"items": [{"name": "Espresso beans", "quantity": 2, "price": "12.50"}]}'

local pause = tonumber(os.getenv("PAUSE_MS"))

function delay()
  return pause * (0.5 + math.random())
end
