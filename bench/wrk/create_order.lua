-- POST /orders as the user whose access token is in $TOKEN: one order of two items per request.
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"items": [{"name": "Espresso beans", "quantity": 2, "price": "12.50"}, ' ..
           '{"name": "Filter papers", "quantity": 1, "price": "3.90"}]}'
